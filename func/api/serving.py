"""What every route module shares: settings, serving state, the one predict call, and
the one way to read a JSON body and write a JSON response (with the X-Model-* headers).

Every prediction gets its id here, in the one predict call: the client's own request id
when it sent one, else a new one (16 random hex digits per process, then a counter).
Row r of a request of several rows is `<id>/<r>`. The id goes out in the
`X-Prediction-Id` header of whatever answer the request gets, into the prediction log
and into the pod's recent-prediction index, against which feedback is scored.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import time
from collections import Counter
from typing import Any

import numpy as np
from flask import Response, request

from ..codecs import rows as codecs
from ..codecs.feedback import Feedback, decode_feedback
from ..config import Settings
from ..errors import NotFound, NotReady, UnsupportedMediaType, WarmstartError, body_too_large
from ..model.batching import Batcher
from ..model.card import CardError, check_identity
from ..model.runtime import Model, Prediction
from ..model.state import ServingState
from ..observe.drift import Drift
from ..observe.metrics import FeedbackScores, Metrics
from ..observe.observer import current
from ..observe.prediction_log import PredictionLog, split_id
from ..observe.recent import RecentPredictions
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
        # Set when the model has loaded (func/api/app.py), by the settings.
        self.log: PredictionLog | None = None
        self.recent: RecentPredictions | None = None
        self.scores: FeedbackScores | None = None
        self._codes: Any = None
        self._id_prefix = ""
        self._id_counter: Any = None
        self._new_id_sequence()
        os.register_at_fork(after_in_child=self._new_id_sequence)
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
        """A JSON response carrying the model headers (and the request's prediction id)."""
        all_headers = {**self.model_headers(), **headers} if headers else self.model_headers()
        record = current()
        if record is not None and record.prediction_id is not None:
            all_headers = {**all_headers, "X-Prediction-Id": record.prediction_id}
        return Response(codecs.dump_json(body), status, all_headers, mimetype="application/json")

    def respond_bytes(self, body: bytes | str, headers: dict[str, str]) -> Response:
        """A response whose body and Content-Type the caller already encoded (a reply event)."""
        record = current()
        if record is not None and record.prediction_id is not None:
            headers = {**headers, "X-Prediction-Id": record.prediction_id}
        return Response(body, 200, {**self.model_headers(), **headers})

    def predict(self, model: Model, rows: np.ndarray, request_id: str | None = None) -> Prediction:
        """The one model call of every request, coalesced with concurrent ones when
        ADAPTIVE_BATCH_ROWS is set. The request gets its prediction id (`request_id`, the
        client's, or a new one); its record gets the id, its rows and timing."""
        started = time.perf_counter()
        prediction = self._call(model, rows)
        prediction_id = request_id or self.new_id()
        drift = self.drift
        if drift is not None:
            drift.add(rows, prediction)
        self.record_model_call(started, len(rows), prediction_id)
        if self.recent is not None:
            self.recent.add(prediction_id, self._codes(prediction.labels))
        if self.log is not None:
            self.log.predictions(prediction_id, rows, prediction)
        return prediction

    def record_model_call(self, started: float, rows: int, prediction_id: str | None = None) -> None:
        """The request's record (access log, metrics, trace) gets the rows and timing of
        its model call, which started at `started`: a predict call, or a whole batch job;
        and the prediction id its answer names."""
        record = current()
        if record is not None:
            record.infer_start, record.infer_end = started, time.perf_counter()
            record.rows += rows
            if prediction_id is not None:
                record.prediction_id = prediction_id

    def new_id(self) -> str:
        """A prediction id no other process makes: its own random prefix, then a count."""
        return f"{self._id_prefix}-{next(self._id_counter):x}"

    def _new_id_sequence(self) -> None:
        """A process's own prefix; a forked child makes its own (os.register_at_fork)."""
        self._id_prefix, self._id_counter = secrets.token_hex(8), itertools.count(1)

    def batch_id(self, event_id: str) -> str:
        """A batch job's prediction id, its rows `<id>/<r>`: the event's id when it is a
        valid request id, else a digest of it. A re-delivered job gets the same ids."""
        try:
            return codecs.request_id(event_id) or ""
        except WarmstartError:
            return "batch-" + hashlib.sha256(event_id.encode()).hexdigest()[:24]

    def observe_batch(self, job_id: str, first_row: int, rows: np.ndarray, prediction: Prediction) -> None:
        """A batch job's chunk: the log gets every k-th row (PREDICTION_LOG_SAMPLE); drift
        sees every k-th row, BATCH_DRIFT_ROWS of a chunk at most, so one large job does
        not fill the pod's drift windows by itself."""
        if self.log is not None:
            self.log.batch_chunk(job_id, first_row, rows, prediction)
        drift = self.drift
        if drift is None:
            return
        step = -(-len(rows) // BATCH_DRIFT_ROWS)
        if step > 1:
            rows, prediction = rows[::step], Prediction(np.asarray(prediction.labels)[::step], None)
        drift.add(rows, prediction)

    def watch(self, model: Model) -> None:
        """Once the model has loaded: the prediction log, the recent index and the
        feedback scores, as the settings ask."""
        settings, card = self.settings, model.card
        if settings.prediction_log:
            self.log = PredictionLog(
                settings.prediction_log,
                card,
                model.sha256,
                settings.k_revision,
                settings.prediction_log_sample,
                settings.prediction_log_buffer,
                settings.prediction_log_flush_s,
                self.metrics.log_rows,
            )
        if settings.feedback:
            self._codes = _answer_codes(card.class_labels if card.is_classifier else None)
            self.scores = FeedbackScores(
                settings.shared_dir, card.class_labels if card.is_classifier else None, self.metrics.model_labels
            )
            self.metrics.add_collector(self.scores)
            self.recent = RecentPredictions(settings.shared_dir, settings.feedback_recent)

    def take_feedback(self, body: Any) -> dict[str, int]:
        """Score labels against this pod's recent answers, count them, and log them."""
        if not self.settings.feedback:
            raise NotFound("feedback is off here (FEEDBACK=0)")
        model = self.state.model
        if self.recent is None or self.scores is None:
            raise NotReady(self.state.not_ready_reason())
        feedback = decode_feedback(body, model.card, self.settings.max_rows)
        request_ids, rows = map(list, zip(*map(split_id, feedback.ids)))
        matched, answers, first = self.recent.match(request_ids, rows, feedback.codes)
        reported = self._score_reported(feedback, request_ids, rows, matched)
        self.scores.add(matched, answers, feedback.codes, first, reported)
        if self.log is not None:
            self.log.feedback(feedback.ids, feedback.labels, matched)
        found, scored_here = int(matched.sum()), int(reported.sum())
        return {
            "accepted": len(feedback.ids),
            "matched": found,
            "reported": scored_here,
            "unmatched": len(feedback.ids) - found - scored_here,
        }

    def _score_reported(self, feedback: Feedback, request_ids: list[str], rows: list[int], matched: Any) -> Any:
        """Score the rows another pod answered, whose items report that answer, against
        it; which items were. A row labelled twice in one request is scored once, as
        `match` scores a known row's first label only."""
        assert self.scores is not None and self.recent is not None
        reported = np.zeros(len(matched), dtype=bool)
        elsewhere = np.flatnonzero(~matched & ~np.isnan(feedback.reported))
        if not len(elsewhere):
            return reported
        row_of = [(request_ids[i], rows[i]) for i in elsewhere]
        once = np.array(sorted({row: int(i) for row, i in zip(reversed(row_of), elsewhere[::-1])}.values()))
        labels_of = Counter(row_of)  # each item is counted, each row scored once
        items = np.array([labels_of[(request_ids[i], rows[i])] for i in once])
        by = [feedback.answered_by[i] for i in once]
        kept = once[self.scores.add_reported(feedback.reported[once], feedback.codes[once], by, items)]
        self.recent.remember(
            [request_ids[i] for i in kept], [rows[i] for i in kept], feedback.reported[kept], feedback.codes[kept]
        )
        scored = {(request_ids[i], rows[i]) for i in kept}
        reported[elsewhere] = [row in scored for row in row_of]
        return reported

    def close(self) -> None:
        """The worker's last step: write what the prediction log holds."""
        if self.log is not None:
            self.log.close()

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
        if request.environ.get("CONTENT_TYPE") == "application/json":
            return  # the common case, without werkzeug parsing the header (1 us)
        mimetype = request.mimetype
        if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
            raise UnsupportedMediaType(f"Content-Type {mimetype!r} is not supported; send application/json")

    def body_bytes(self) -> bytes:
        """The raw body, at most MAX_REQUEST_BYTES (413 past that, chunked bodies included)."""
        limit = self.settings.max_request_bytes
        environ = request.environ
        text = environ.get("CONTENT_LENGTH")
        if text and text.isdigit() and text.isascii() and "HTTP_TRANSFER_ENCODING" not in environ:
            length: int | None = int(text)  # what werkzeug reads, without its regex and header lookups
        else:
            length = request.content_length
        if length is not None and length <= limit:
            # One read of the announced length, not werkzeug's 64 KB at a time.
            return environ["wsgi.input"].read(length)
        if length is None and "wsgi.input_terminated" in environ:
            # A chunked body: werkzeug would silently cut it at the limit, so read one
            # byte past the limit to tell "exactly at" from "over".
            data = environ["wsgi.input"].read(limit + 1)
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


def _answer_codes(class_labels: tuple[Any, ...] | None) -> Any:
    """labels -> what the recent index keeps: a class's index in the card (-1 for a label
    the card does not list), or a regressor's value. Lists for one row, the common case;
    arrays for many rows of numeric classes (a 10,000-row request: 0.05 ms, not 0.35)."""
    if class_labels is None:
        return lambda labels: np.asarray(labels, dtype=np.float64).reshape(-1).tolist()
    index = {c: float(i) for i, c in enumerate(class_labels)}
    classes = np.asarray(class_labels)
    numeric = classes.size > 0 and classes.dtype.kind in "biuf" and not np.isnan(classes.astype(np.float64)).any()
    order = np.argsort(classes, kind="stable")
    ordered = classes[order]

    def codes(labels: Any) -> Any:
        if type(labels) is np.ndarray and labels.shape == (1,):
            return [index.get(labels.item(), -1.0)]  # one row, the common case
        values = np.asarray(labels).reshape(-1)
        if numeric and len(values) > 1 and values.dtype.kind in "biuf":
            at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
            return np.where(ordered[at] == values, order[at], -1).astype(np.float64)
        return [index.get(v, -1.0) for v in values.tolist()]

    return codes
