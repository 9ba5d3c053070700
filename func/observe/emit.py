"""Events this function sends on its own (drift), to K_SINK, off the request path.

One sender thread per process sends them in order, in CloudEvents binary mode (what
Knative's brokers and sinks take), each with a timeout and a bounded number of retries
with backoff. A slow, failing or absent sink costs a prediction nothing: the send is
logged and counted (`warmstart_events_sent_total{outcome}`), never raised.

Sends are rate-limited (a token bucket: BURST at once, then RATE_PER_S) and wait in a
queue of at most QUEUE_EVENTS: when it is full the oldest waiting event is dropped and
counted (`outcome="dropped"`). Without both, a sink that never answered once held 2,000
queued events, tried one at a time for 7.5 s each: hours of backlog.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

# The one import of the cloudevents SDK: the API's replies and the jobs' events use it too.
try:  # cloudevents 2.x keeps the 1.x API under cloudevents.v1
    from cloudevents.v1.conversion import to_binary, to_structured  # noqa: F401 (re-exported)
    from cloudevents.v1.http import CloudEvent
except ImportError:
    from cloudevents.conversion import to_binary, to_structured  # noqa: F401 (re-exported)
    from cloudevents.http import CloudEvent

import orjson

log = logging.getLogger("warmstart.emit")

TIMEOUT_S = 2.0
# Three tries over about 1.5 s: a broker restarting is back by then; a sink that is
# down for longer is the dead-letter of a later window.
RETRY_DELAYS_S = (0.5, 1.0)
# The events a pod sends are rare (one per drift episode): ten at once, then one a
# second, is far above that and far below what floods a broker or a JobSink.
BURST = 10
RATE_PER_S = 1.0
QUEUE_EVENTS = 100


def _dump_json(data: Any) -> bytes:
    """Event data as JSON; NumPy values (drift statistics) serialise as numbers. Not
    codecs.dump_json: the rollout job sends events too and has no NumPy or onnxruntime."""
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


class Emitter:
    def __init__(
        self,
        sink: str | None,
        source: str,
        counted: Callable[[str, str], None],
        timeout_s: float = TIMEOUT_S,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
    ) -> None:
        self.sink, self.source = sink, source
        self._counted = counted
        self._timeout, self._delays = timeout_s, retry_delays_s
        self._queue: deque[tuple[CloudEvent, Future[str]]] = deque()
        self._ready = threading.Condition()
        self._sender: threading.Thread | None = None
        self._tokens, self._filled_at = float(BURST), time.monotonic()
        self._told_no_sink = False

    def send(self, kind: str, event_id: str, data: dict[str, Any], subject: str | None = None) -> Future[str] | None:
        """Queue one event; the future says how it ended ("sent", "failed", "dropped", "no_sink")."""
        if not self.sink:
            # Said once: without a sink (a local run) every drift window would repeat it.
            if not self._told_no_sink:
                self._told_no_sink = True
                log.warning(
                    "%s %s not sent: K_SINK is not set (a SinkBinding sets it); events are not sent "
                    'and not logged again, warmstart_events_sent_total{outcome="no_sink"} counts them',
                    kind,
                    event_id,
                )
            self._counted(kind, "no_sink")
            return None
        attributes = {"type": kind, "source": self.source, "id": event_id}
        if subject:
            attributes["subject"] = subject
        future: Future[str] = Future()
        with self._ready:
            if len(self._queue) >= QUEUE_EVENTS:
                oldest, dropped = self._queue.popleft()
                log.error(
                    "%s %s dropped: %d events wait for %s already",
                    oldest["type"],
                    oldest["id"],
                    QUEUE_EVENTS,
                    self.sink,
                )
                self._counted(oldest["type"], "dropped")
                dropped.set_result("dropped")
            self._queue.append((CloudEvent(attributes, data), future))
            if self._sender is None:
                # started in the serving process: a thread would not survive gunicorn's fork
                self._sender = threading.Thread(target=self._send_queued, name="emit", daemon=True)
                self._sender.start()
            self._ready.notify()
        return future

    def _send_queued(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                event, future = self._queue.popleft()
            self._take_token()
            try:
                outcome = self._deliver(event)
            except Exception:  # the sender must outlive any one bad event
                log.exception("%s %s not sent", event["type"], event["id"])
                self._counted(event["type"], "failed")
                outcome = "failed"
            future.set_result(outcome)

    def _take_token(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._filled_at) * RATE_PER_S)
        self._filled_at = now
        if self._tokens < 1:
            time.sleep((1 - self._tokens) / RATE_PER_S)
            self._tokens, self._filled_at = 1.0, time.monotonic()
        self._tokens -= 1

    def _deliver(self, event: CloudEvent) -> str:
        headers, body = to_binary(event, data_marshaller=_dump_json)
        headers["Content-Type"] = "application/json"
        problem, tries = "", 0
        for delay in (0.0, *self._delays):
            time.sleep(delay)
            tries += 1
            request = urllib.request.Request(self.sink, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status, problem = exc.code, f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the sink refuses this event; sending it again will not help
                continue
            except (OSError, ValueError) as exc:
                problem = str(getattr(exc, "reason", exc))
                continue
            if 200 <= status < 300:
                log.info("%s %s sent to %s", event["type"], event["id"], self.sink)
                self._counted(event["type"], "sent")
                return "sent"
            problem = f"HTTP {status}"
        log.error("%s %s not sent to %s after %d tries: %s", event["type"], event["id"], self.sink, tries, problem)
        self._counted(event["type"], "failed")
        return "failed"
