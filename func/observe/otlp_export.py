"""A span exporter for OTLP/HTTP with protobuf bodies (`http/protobuf`, OTLP's default),
on the standard library's HTTP client.

It stands in for opentelemetry-exporter-otlp-proto-http, which brings protobuf,
opentelemetry-proto and requests with it (9 MB of the image, bytecode included) to send
one POST. It reads the same standard variables, the traces-specific one first:
OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT (milliseconds, as the
specification says), _COMPRESSION (gzip, deflate or none), _CERTIFICATE, _CLIENT_KEY and
_CLIENT_CERTIFICATE, and it retries what the specification calls transient (429, 502, 503,
504, a lost connection) with exponential backoff, or after the receiver's Retry-After,
until the timeout. https://opentelemetry.io/docs/specs/otel/protocol/exporter/
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .otlp_encoding import export_request

log = logging.getLogger("warmstart.tracing")

TRANSIENT = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class OtlpSettings:
    endpoint: str
    headers: dict[str, str]
    timeout_s: float
    compression: str
    ssl_context: ssl.SSLContext | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OtlpSettings:
        def setting(name: str) -> str:
            return (env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or "").strip()

        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if not endpoint:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
            endpoint = base.removesuffix("/") + "/v1/traces"
        protocol = setting("PROTOCOL")
        if protocol and protocol != "http/protobuf":
            log.warning(
                "OTEL_EXPORTER_OTLP_PROTOCOL=%s: warmstart sends spans as http/protobuf only; "
                "point the endpoint at the receiver's OTLP/HTTP port (4318 by default)",
                protocol,
            )
        compression = setting("COMPRESSION").lower() or "none"
        if compression not in ("gzip", "deflate", "none"):
            log.warning(
                "OTEL_EXPORTER_OTLP_COMPRESSION=%s is not gzip, deflate or none: spans go uncompressed", compression
            )
            compression = "none"
        return cls(
            endpoint=endpoint,
            headers=parse_headers(setting("HEADERS")),
            timeout_s=_timeout_s(setting("TIMEOUT")),
            compression=compression,
            ssl_context=_ssl_context(setting("CERTIFICATE"), setting("CLIENT_CERTIFICATE"), setting("CLIENT_KEY"))
            if endpoint.startswith("https:")
            else None,
        )


def parse_headers(value: str) -> dict[str, str]:
    """`key1=value1,key2=value2`, values percent-encoded (the W3C baggage format the
    specification names); keys are lowercased. A malformed entry is skipped, with a line."""
    headers = {}
    for entry in value.split(","):
        if not entry.strip():
            continue
        key, sep, raw = entry.partition("=")
        key = key.strip().lower()
        if not sep or not key or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in key):
            log.warning("OTEL_EXPORTER_OTLP_HEADERS: %r is not key=value; skipped", entry.strip())
            continue
        headers[key] = urllib.parse.unquote(raw.strip())
    return headers


def _timeout_s(value: str) -> float:
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1
    if milliseconds <= 0:
        log.warning("OTEL_EXPORTER_OTLP_TIMEOUT=%s is not a positive number of milliseconds; using 10000", value)
        return DEFAULT_TIMEOUT_S
    return milliseconds / 1000


def _ssl_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS for an https endpoint. A certificate that cannot be read is logged, naming its
    variable, and left out: tracing must not keep the server from starting."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as error:
            log.error(
                "OTEL_EXPORTER_OTLP_CERTIFICATE=%s cannot be used (%s): the system's CAs verify the receiver",
                ca_file,
                error,
            )
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError) as error:
            log.error(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=%s (key %s) cannot be used (%s): "
                "spans go without a client certificate",
                cert_file,
                key_file or "in the same file",
                error,
            )
    return context


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After: delay-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class OtlpHttpSpanExporter(SpanExporter):
    """The BatchSpanProcessor's exporter: one POST per batch, from its own thread."""

    def __init__(self, settings: OtlpSettings) -> None:
        self._settings = settings
        self._headers = {
            "content-type": "application/x-protobuf",
            "user-agent": "warmstart-otlp-exporter",
            **settings.headers,
        }
        if settings.compression != "none":
            self._headers["content-encoding"] = settings.compression
        self._stopped = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            return SpanExportResult.FAILURE
        body = export_request(spans)
        if self._settings.compression == "gzip":
            body = gzip.compress(body, mtime=0)
        elif self._settings.compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self._settings.timeout_s
        for attempt in range(MAX_ATTEMPTS):
            status, reason, retry_after = self._post(body, max(deadline - time.monotonic(), 0.001))
            if status is not None and 200 <= status < 300:
                return SpanExportResult.SUCCESS
            if status is not None and status not in TRANSIENT:
                log.error(
                    "%d spans not exported: %s answered %d %s", len(spans), self._settings.endpoint, status, reason
                )
                return SpanExportResult.FAILURE
            backoff = retry_after if retry_after is not None else 2**attempt * random.uniform(0.8, 1.2)
            if attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic() or self._stopped.wait(backoff):
                break
        log.error(
            "%d spans not exported: %s, %s, after %d attempts",
            len(spans),
            self._settings.endpoint,
            f"{status} {reason}" if status is not None else reason,
            attempt + 1,
        )
        return SpanExportResult.FAILURE

    def _post(self, body: bytes, timeout_s: float) -> tuple[int | None, str, float | None]:
        """(status, reason, Retry-After seconds); status None when no answer came."""
        request = urllib.request.Request(self._settings.endpoint, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=self._settings.ssl_context) as answer:
                answer.read()
                return answer.status, answer.reason, None
        except urllib.error.HTTPError as error:
            error.read()
            return error.code, str(error.reason), _retry_after_s(error.headers.get("retry-after"))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            return None, str(getattr(error, "reason", error)), None

    def shutdown(self) -> None:
        self._stopped.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
