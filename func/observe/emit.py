"""Events this function sends on its own (drift), to K_SINK, off the request path.

One sender thread per process sends them in order, in CloudEvents binary mode (what
Knative's brokers and sinks take), each with a timeout and a bounded number of retries
with backoff. A slow, failing or absent sink costs a prediction nothing: the send is
logged and counted (`warmstart_events_sent_total{outcome}`), never raised.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
        self._sender: ThreadPoolExecutor | None = None
        self._told_no_sink = False

    def send(self, kind: str, event_id: str, data: dict[str, Any], subject: str | None = None) -> Future[str] | None:
        """Queue one event; the future says how it ended ("sent", "failed", "no_sink")."""
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
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emit")
        attributes = {"type": kind, "source": self.source, "id": event_id}
        if subject:
            attributes["subject"] = subject
        return self._sender.submit(self._deliver, CloudEvent(attributes, data))

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
