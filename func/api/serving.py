"""What every route module shares: settings, serving state, and the one way to read a
JSON body and write a JSON response (with the X-Model-* headers)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Response, request

from ..codecs import rows as codecs
from ..config import Settings
from ..errors import NotFound, UnsupportedMediaType, body_too_large
from ..model.batching import Batcher
from ..model.card import CardError, check_identity
from ..model.runtime import Model, Prediction
from ..model.state import ServingState
from ..observe.drift import Drift
from ..observe.metrics import Metrics
from ..observe.observer import current
from ..observe.tracing import Tracing

# Of a batch job's chunk of 65,536 rows, drift sees about this many (1.5%).
BATCH_DRIFT_ROWS = 1000


def _configured(value: str | None, field: str, default: str) -> str:
    """MODEL_NAME or MODEL_VERSION for the headers before the model has loaded, if a
    header can carry it (else the load fails on it, and says so in the log)."""
    if value is None:
        return default
    try:
        check_identity(value, field)
    except CardError:
        return default
    return value


class Serving:
    def __init__(self, settings: Settings, state: ServingState, metrics: Metrics) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.tracing = Tracing()
        self.drift: Drift | None = None
        self._static_headers = {"X-Revision": settings.k_revision} if settings.k_revision else {}
        self._loaded_headers: dict[str, str] | None = None
        self._batcher: Batcher | None = None

    def model_headers(self) -> dict[str, str]:
        model = self.state.loaded
        if model is not None:
            if self._loaded_headers is None:
                # Built once: every response carries them, and the card does not change.
                self._loaded_headers = self._headers(model.card.name, model.card.version)
            return self._loaded_headers
        return self._headers(
            _configured(self.settings.model_name, "name", "model"),
            _configured(self.settings.model_version, "version", "1"),
        )

    def _headers(self, name: str, version: str) -> dict[str, str]:
        return {"X-Model-Name": name, "X-Model-Version": version, **self._static_headers}

    @staticmethod
    def error_body(path: str, code: str, message: str) -> dict[str, Any]:
        """An error in the words of the route at `path`, for errors found before routing
        (func/server/worker.py): the Open Inference Protocol (/v2) has a bare message,
        every other route a code and a message."""
        if path == "/v2" or path.startswith("/v2/"):
            return {"error": message}
        return {"error": {"code": code, "message": message}}

    def respond(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response carrying the model headers."""
        all_headers = {**self.model_headers(), **headers} if headers else self.model_headers()
        return Response(codecs.dump_json(body), status, all_headers, mimetype="application/json")

    def respond_bytes(self, body: bytes | str, headers: dict[str, str]) -> Response:
        """A response whose body and Content-Type the caller already encoded (a reply event)."""
        return Response(body, 200, {**self.model_headers(), **headers})

    def predict(self, model: Model, rows: np.ndarray) -> Prediction:
        """The one model call of every request, coalesced with concurrent ones when
        ADAPTIVE_BATCH_ROWS is set; the request's record gets its rows and timing."""
        started = time.perf_counter()
        prediction = self._call(model, rows)
        drift = self.drift
        if drift is not None:
            drift.add(rows, prediction)
        self.record_model_call(started, len(rows))
        return prediction

    def record_model_call(self, started: float, rows: int) -> None:
        """The request's record (access log, metrics, trace) gets the rows and timing of
        its model call, which started at `started`: a predict call, or a whole batch job."""
        record = current()
        if record is not None:
            record.infer_start, record.infer_end = started, time.perf_counter()
            record.rows += rows

    def observe_batch(self, rows: np.ndarray, prediction: Prediction) -> None:
        """A batch job's chunk: drift sees every k-th row, BATCH_DRIFT_ROWS of a chunk at
        most, so one large job does not fill the pod's drift windows by itself."""
        drift = self.drift
        if drift is None:
            return
        step = -(-len(rows) // BATCH_DRIFT_ROWS)
        if step > 1:
            rows, prediction = rows[::step], Prediction(np.asarray(prediction.labels)[::step], None)
        drift.add(rows, prediction)

    def _call(self, model: Model, rows: np.ndarray) -> Prediction:
        rows_limit = self.settings.adaptive_batch_rows
        if not rows_limit:
            return model.predict(rows)
        if self._batcher is None:
            self._batcher = Batcher(model.predict, rows_limit, self.settings.adaptive_batch_delay_ms / 1000)
        return self._batcher.predict(rows)

    def json_bytes(self) -> bytes:
        """The raw body of a JSON request (415 for another Content-Type)."""
        self.require_json()
        return self.body_bytes()

    def require_json(self) -> None:
        """415 unless the body is JSON; no Content-Type counts as JSON (OIP clients send none)."""
        mimetype = request.mimetype
        if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
            raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not supported; send application/json")

    def body_bytes(self) -> bytes:
        """The raw body, at most MAX_REQUEST_BYTES (413 past that, chunked bodies included)."""
        limit = self.settings.max_request_bytes
        length = request.content_length
        if length is not None and length <= limit:
            # One read of the announced length, not werkzeug's 64 KB at a time.
            return request.environ["wsgi.input"].read(length)
        if length is None and "wsgi.input_terminated" in request.environ:
            # A chunked body: werkzeug would silently cut it at the limit, so read one
            # byte past the limit to tell "exactly at" from "over".
            data = request.environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                raise body_too_large(limit)
            return data
        return request.get_data(cache=False)

    def model_named(self, name: str, version: str | None = None) -> Model:
        """The loaded model if `name` (and `version`, when given) match it, else 404."""
        model = self.state.model
        card = model.card
        if name != card.name:
            raise NotFound(f"model {name!r} is not served here; this server serves {card.name!r}")
        if version is not None and version != card.version:
            raise NotFound(f"model {name!r} has no version {version!r}; this server serves version {card.version!r}")
        return model
