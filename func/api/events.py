"""CloudEvents in, reply events out: how warmstart serves Knative Eventing.

An event arrives as `POST /` in binary mode (ce-* headers) or structured mode
(application/cloudevents+json); the reply goes back in the same mode. Bad events get
400/422 (Knative does not retry them; they go to the dead-letter sink); not ready or
busy gets 503 (Knative retries).
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import quote, unquote

import orjson
from flask import Request, Response, request

from ..batch import job as batch
from ..codecs import rows as codecs
from ..errors import MalformedRequest, NotReady, UnknownEventType, UnsupportedMediaType, WarmstartError
from ..observe.emit import CloudEvent, to_binary, to_structured
from ..observe.observer import current
from ..observe.tracing import is_traceparent
from .serving import Serving

PREDICT = "warmstart.predict.v1"
PREDICTION = "warmstart.prediction.v1"
BATCH = "warmstart.batch.v1"
BATCH_COMPLETED = "warmstart.batch.completed.v1"
FEEDBACK = "warmstart.feedback.v1"
FEEDBACK_ACCEPTED = "warmstart.feedback.accepted.v1"
STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
REQUIRED = ("specversion", "id", "source", "type")
# Extensions a reply carries over from its request (W3C trace context, as Knative's
# brokers propagate it).
TRACE_EXTENSIONS = ("traceparent", "tracestate")
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def is_cloudevent(req: Request) -> bool:
    """Binary mode has ce-specversion; structured and batched mode have their media type."""
    mimetype = req.mimetype
    return "ce-specversion" in req.headers or mimetype == STRUCTURED or mimetype == BATCHED


class EventHandler:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        # One batch job per process at a time: a job saturates a core for seconds, and a
        # second one would only slow both. The next one gets 503 at once, which Knative
        # retries (possibly on another pod): waiting for the slot would hold one of the
        # worker's few threads, and predictions would queue behind it.
        self._batch_slot = threading.BoundedSemaphore(1)

    def handle(self) -> Response:
        """Answer one event; every event is counted by type and outcome."""
        record = current()
        if record is not None:
            record.protocol = "cloudevent"
        seen = {"type": "unparsed"}
        try:
            response = self._handle(seen, record)
        except WarmstartError as exc:
            self.serving.metrics.event_received(seen["type"], exc.code)
            raise
        self.serving.metrics.event_received(seen["type"], "ok")
        return response

    def _handle(self, seen: dict[str, str], record: Any) -> Response:
        if request.mimetype == BATCHED:
            raise UnsupportedMediaType(
                f"batched CloudEvents ({BATCHED}) are not supported; send one event per request, "
                "in binary or structured mode"
            )
        event = self._parse()
        kind = seen["type"] = event["type"]
        self.serving.tracing.continue_event(record, event.get("traceparent"), event.get("tracestate"))
        if kind == PREDICT:
            reply_type, data = PREDICTION, self._predict(event.data)
        elif kind == BATCH:
            reply_type, data = BATCH_COMPLETED, self._batch(event.data, event["id"], record)
        elif kind == FEEDBACK:
            reply_type, data = FEEDBACK_ACCEPTED, self.serving.take_feedback(event.data)
        else:
            raise UnknownEventType(
                f"event type {kind!r} is not handled here; send {PREDICT!r}, {BATCH!r} or {FEEDBACK!r}"
            )
        return self._reply(event, reply_type, data, record)

    def _parse(self) -> CloudEvent:
        """The event, its attributes checked; its data parsed by codecs.parse_json, the
        one JSON parser of every route (so a body it cannot parse is a 400 here too)."""
        if request.mimetype == STRUCTURED:
            envelope = codecs.parse_json(self.serving.body_bytes())
            if not isinstance(envelope, dict):
                raise MalformedRequest(
                    f"structured CloudEvent: expected a JSON object, got {codecs.json_type(envelope)}"
                )
            if "data_base64" in envelope:
                raise UnsupportedMediaType("structured CloudEvent: data_base64 is not supported; send JSON in 'data'")
            data = envelope.pop("data", None)
            attributes = _checked(envelope, "attribute {!r}")
        else:
            # Binary mode: the body is the event's data, so it must be JSON like any other.
            self.serving.require_json()
            headers = {
                name.lower()[3:]: _header_value(name, value)
                for name, value in request.headers.items()
                if name.lower().startswith("ce-")
            }
            attributes = _checked(headers, "header 'ce-{}'")
            body = self.serving.body_bytes()
            data = codecs.parse_json(body) if body else None
        return CloudEvent(attributes, data)

    def _predict(self, data: Any) -> dict[str, Any]:
        model = self.serving.state.model
        rows, single, request_id = codecs.decode_predict(data, model.card, self.serving.settings.max_rows)
        return codecs.prediction_body(self.serving.predict(model, rows, request_id), model.card, single)

    def _batch(self, data: Any, event_id: str, record: Any) -> dict[str, Any]:
        job = batch.BatchJob.from_event_data(data)
        model = self.serving.state.model
        if not self._batch_slot.acquire(blocking=False):
            # Backpressure, not a failure: counted with the worker's other refusals
            # (protocol "other"), so that a client retrying every second does not show as
            # 5xx answers in the error ratio a canary is judged by.
            if record is not None:
                record.protocol = "other"
            # Retry-After 1: a job may end in milliseconds (a 250-row part: 20 ms), and
            # a client that honours the header (scripts/submit_batch.py) waited 5 s a part.
            raise NotReady("a batch job is already running in this instance; retry later", retry_after=1)
        metrics = self.serving.metrics
        prediction_id = self.serving.batch_id(event_id)

        def observe(first_row: int, rows: Any, prediction: Any) -> None:
            self.serving.observe_batch(prediction_id, first_row, rows, prediction)

        started = time.perf_counter()
        try:
            settings = self.serving.settings
            result = batch.run_job(
                job,
                model,
                settings.batch_allow,
                event_id,
                observe,
                settings.batch_progress_s,
                prediction_id,
                settings.inference_threads,
            )
        except Exception as exc:
            metrics.batch_job(exc.code if isinstance(exc, WarmstartError) else "internal", 0)
            raise
        finally:
            self._batch_slot.release()
        metrics.batch_job("completed", result["rows"])
        self.serving.record_model_call(started, result["rows"], prediction_id)
        return {**result, "prediction_id": prediction_id}

    def _reply(self, event: CloudEvent, reply_type: str, data: dict[str, Any], record: Any) -> Response:
        attributes = {"type": reply_type, "source": self.serving.settings.ce_source, "causationid": event["id"]}
        if event.get("subject") is not None:
            attributes["subject"] = event["subject"]
        for name in TRACE_EXTENSIONS:
            if event.get(name) is not None:
                attributes[name] = event[name]
        # An invalid traceparent header is ignored, as W3C Trace Context asks; the event's
        # own traceparent was checked with its other attributes.
        header = request.headers.get("traceparent")
        incoming = header if is_traceparent(header) else event.get("traceparent")
        traceparent = self.serving.tracing.reply_traceparent(record, incoming)
        if traceparent is not None:
            attributes["traceparent"] = traceparent
        reply = CloudEvent(attributes, data)
        if request.mimetype == STRUCTURED:
            # The SDK writes the envelope with json.dumps, which needs plain Python data.
            headers, body = to_structured(reply, data_marshaller=_plain_json)
        else:
            headers, body = to_binary(reply, data_marshaller=codecs.dump_json)
            headers = {name: _header_text(value) for name, value in headers.items()}
            headers["Content-Type"] = "application/json"
        if traceparent is not None and "traceparent" in request.headers:
            headers["traceparent"] = traceparent
        return self.serving.respond_bytes(body, headers)


def _checked(attributes: dict[str, Any], where: str) -> dict[str, Any]:
    """The attributes, if the required ones are non-empty strings and specversion is 1.0;
    `where` names an attribute in a message ("header 'ce-{}'" or "attribute {!r}")."""
    for name in REQUIRED:
        value = attributes.get(name)
        if value is None:
            raise MalformedRequest(f"not a valid CloudEvent: {where.format(name)} is missing")
        if not isinstance(value, str) or not value:
            raise MalformedRequest(
                f"not a valid CloudEvent: {where.format(name)} must be a non-empty string, got {codecs.short(value)}"
            )
    if attributes["specversion"] != SPECVERSION:
        raise MalformedRequest(
            f"not a valid CloudEvent: {where.format('specversion')} is {attributes['specversion']!r}; "
            f"this function reads CloudEvents {SPECVERSION}"
        )
    checked = {}
    for name, value in attributes.items():
        if value is None:
            continue  # the JSON format reads a null optional attribute as absent
        # CloudEvents attribute types (string, integer, boolean, URI, timestamp) are JSON
        # strings, integers and booleans.
        if not isinstance(value, (str, int)):
            raise MalformedRequest(
                f"not a valid CloudEvent: {where.format(name)} must be a string, integer or boolean, "
                f"got {codecs.short(value)}"
            )
        checked[name] = value
    # A reply passes it on, in a header of its own.
    traceparent = checked.get("traceparent")
    if traceparent is not None and not is_traceparent(traceparent):
        raise MalformedRequest(
            f"not a valid CloudEvent: {where.format('traceparent')} must be a W3C traceparent "
            f"(00-<32 hex digits>-<16 hex digits>-<2 hex digits>), got {codecs.short(traceparent)}"
        )
    return checked


def _header_value(name: str, value: str) -> str:
    """A ce-* header as the HTTP binding writes it: UTF-8, with percent-encoded
    characters decoded. The WSGI server hands header bytes over as latin-1."""
    try:
        return unquote(value.encode("latin-1").decode("utf-8"), errors="strict")
    except UnicodeError:
        raise MalformedRequest(f"not a valid CloudEvent: header {name.lower()!r} is not UTF-8 text") from None


def _header_text(value: str) -> str:
    """A ce-* header value percent-encoded as the HTTP binding asks: space, '"', '%' and
    everything outside printable ASCII (a subject in any language echoed back)."""
    return quote(value, safe=_HEADER_SAFE)


def _plain_json(data: Any) -> Any:
    return orjson.loads(codecs.dump_json(data))
