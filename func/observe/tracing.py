"""OpenTelemetry traces: one span per request, with decode, infer and encode children,
exported over OTLP/HTTP (func/observe/otlp_export.py) when the standard OTEL_* variables
ask for it.

Without them nothing of OpenTelemetry is imported: `Tracing` does nothing, and the cold
start and the per-request cost stay what they were. With them, each worker sets up its
own tracer provider after the fork (the exporter's thread would not survive one).

Spans are written when the request ends, from the clock readings it already takes
(func/observe/observer.py), so tracing adds no timing of its own to the request path. A request's
parent is its W3C `traceparent` header or, for a structured CloudEvent, the event's
`traceparent` extension; a reply event carries the request span's own context.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from ..config import Settings

log = logging.getLogger("warmstart.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# W3C Trace Context: version-traceid-parentid-flags in lowercase hex, neither id all
# zeros; version 00 is exactly that, a later version may add fields after a '-'.
_IDS = r"-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
_TRACEPARENT = re.compile(rf"00{_IDS}|(?!00|ff)[0-9a-f]{{2}}{_IDS}(?:-[\x21-\x7e]*)?")


def is_traceparent(value: Any) -> bool:
    """Whether `value` is a W3C `traceparent` (https://www.w3.org/TR/trace-context/)."""
    return isinstance(value, str) and _TRACEPARENT.fullmatch(value) is not None


def wanted(env: Mapping[str, str]) -> bool:
    """Tracing is on when an OTLP endpoint is set, unless the SDK or the traces exporter
    is switched off the standard way."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


class Tracing:
    """Tracing switched off: every call returns at once."""

    @staticmethod
    def from_env(settings: Settings, env: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if env is None else env
        if not wanted(env):
            return Tracing()
        return OtlpTracing(settings)

    def continue_event(self, record: Any, traceparent: str | None, tracestate: str | None) -> None:
        """A structured CloudEvent names its parent in its `traceparent` extension."""

    def reply_traceparent(self, record: Any, incoming: str | None) -> str | None:
        """The `traceparent` a reply event carries: the request's own, when not tracing."""
        return incoming

    def finish(self, record: Any, method: str, route: str, status: int, now: float) -> None:
        """The request has been answered: write its span and its stages' spans."""


class OtlpTracing(Tracing):
    def __init__(self, settings: Settings) -> None:
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from .otlp_export import OtlpHttpSpanExporter, OtlpSettings

        defaults = {"service.name": settings.k_service or "warmstart"}
        if settings.k_revision:
            defaults["service.version"] = settings.k_revision
        # defaults only: what OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES say wins
        # (Resource.create lets the attributes it is given override the environment's)
        given = OTELResourceDetector().detect().attributes
        attributes = {key: value for key, value in defaults.items() if key not in given}
        provider = TracerProvider(resource=Resource.create(attributes))
        otlp = OtlpSettings.from_env(os.environ)
        provider.add_span_processor(BatchSpanProcessor(OtlpHttpSpanExporter(otlp)))
        self._tracer = provider.get_tracer("warmstart")
        self._propagator = TraceContextTextMapPropagator()
        self._server, self._internal = SpanKind.SERVER, SpanKind.INTERNAL
        self._error = Status(StatusCode.ERROR)
        self._in_context = set_span_in_context
        # perf_counter readings -> nanoseconds since the epoch, as spans want them
        self._offset_ns = time.time_ns() - time.perf_counter_ns()
        log.info("tracing on: spans go to OTLP/HTTP %s", otlp.endpoint)

    def _ns(self, reading: float) -> int:
        return self._offset_ns + int(reading * 1e9)

    def _span(self, record: Any, method: str, route: str) -> Any:
        """The request's span, started (back-dated to its arrival) on first use, when its
        parent is known."""
        if record.span is None:
            carrier = {"traceparent": record.traceparent} if record.traceparent else {}
            record.span = self._tracer.start_span(
                f"{method} {route}",
                context=self._propagator.extract(carrier),
                kind=self._server,
                start_time=self._ns(record.start),
                attributes={"http.request.method": method, "http.route": route},
            )
            context = record.span.get_span_context()
            # only a trace someone can find: a span the sampler dropped leaves the access
            # line the caller's trace id (its traceparent's), or none
            if context.trace_flags.sampled:
                record.trace_id = format(context.trace_id, "032x")
        return record.span

    def continue_event(self, record: Any, traceparent: str | None, tracestate: str | None) -> None:
        if record is not None and record.span is None and traceparent and not record.traceparent:
            record.traceparent = traceparent

    def reply_traceparent(self, record: Any, incoming: str | None) -> str | None:
        if record is None:
            return incoming
        from flask import request

        rule = request.url_rule
        span = self._span(record, request.method, rule.rule if rule is not None else "unmatched")
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._in_context(span))
        return carrier.get("traceparent", incoming)

    def finish(self, record: Any, method: str, route: str, status: int, now: float) -> None:
        span = self._span(record, method, route)
        span.set_attribute("http.response.status_code", status)
        if record.rows:
            span.set_attribute("warmstart.rows", record.rows)
            context = self._in_context(span)
            stages = (
                ("decode", record.start, record.infer_start),
                ("infer", record.infer_start, record.infer_end),
                ("encode", record.infer_end, now),
            )
            for name, begin, end in stages:
                child = self._tracer.start_span(name, context=context, kind=self._internal, start_time=self._ns(begin))
                child.end(end_time=self._ns(end))
        if status >= 500:
            span.set_status(self._error)
        span.end(end_time=self._ns(now))
