"""One error hierarchy; each error knows its HTTP status and renders as JSON in one place."""

from __future__ import annotations

from typing import Any


class WarmstartError(Exception):
    """An error a client can act on. `code` is stable, `message` says what and where."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class MalformedRequest(WarmstartError):
    """The body is not parseable (not JSON, truncated, wrong encoding)."""

    status = 400
    code = "malformed_request"


class UnknownEventType(WarmstartError):
    """A CloudEvent of a type this function does not handle (not retried by Knative)."""

    status = 400
    code = "unknown_event_type"


class Forbidden(WarmstartError):
    status = 403
    code = "forbidden"


class NotFound(WarmstartError):
    status = 404
    code = "not_found"


class MethodNotAllowed(WarmstartError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(WarmstartError):
    """The client did not send the whole request within READ_TIMEOUT seconds."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(WarmstartError):
    status = 413
    code = "payload_too_large"


def body_too_large(limit: int) -> PayloadTooLarge:
    """The one 413 for a body over MAX_REQUEST_BYTES, whoever finds it."""
    return PayloadTooLarge(f"request body is larger than MAX_REQUEST_BYTES={limit} bytes")


class UnsupportedTransferCoding(WarmstartError):
    """A Transfer-Encoding other than chunked: the server does not decode gzip or deflate."""

    status = 501
    code = "not_implemented"


class UnsupportedMediaType(WarmstartError):
    status = 415
    code = "unsupported_media_type"


class InvalidInput(WarmstartError):
    """The body parsed but does not fit the model: shape, type, names, non-finite values."""

    status = 422
    code = "invalid_input"


class InsufficientStorage(WarmstartError):
    """A batch job's output location is full: a 5xx, so Knative delivers the job again."""

    status = 507
    code = "insufficient_storage"


class NotReady(WarmstartError):
    """The model is not loaded yet, failed to load, or the server is shutting down."""

    status = 503
    code = "not_ready"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
