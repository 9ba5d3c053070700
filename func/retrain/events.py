"""The retraining job's events: the drift event that starts it, the outcome it sends.

The drift event arrives as a file (the JobSink writes it in structured mode); the
outcome, `warmstart.model.trained.v1` or `warmstart.model.rejected.v1`, goes to K_SINK
with the cloudevents SDK in binary or structured mode.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.source import first_line
from ..observe.emit import CloudEvent, to_binary, to_structured
from .training import BadInput, Unreachable

DRIFT = "warmstart.drift.detected.v1"
TRAINED = "warmstart.model.trained.v1"
REJECTED = "warmstart.model.rejected.v1"
SINK_TIMEOUT_S = 30


@dataclass(frozen=True)
class Trigger:
    """The event that started this run: its id keys idempotency and lineage."""

    id: str
    data: dict[str, Any]


def read_trigger(path: str | None, event_id: str | None) -> Trigger:
    """The drift event from its file, or a stand-in for a run by hand."""
    if not path:
        return Trigger(event_id or f"manual-{uuid.uuid4()}", {})
    where = f"K_EVENT_PATH={path}"
    try:
        event = json.loads(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"{where}: cannot read the event file ({exc.strerror})") from None
    except ValueError as exc:
        raise BadInput(f"{where}: not JSON ({exc})") from None
    if not isinstance(event, dict):
        raise BadInput(f"{where}: expected a CloudEvent in structured mode (a JSON object)")
    for key in ("id", "type", "source", "specversion"):
        if not isinstance(event.get(key), str) or not event[key]:
            raise BadInput(f"{where}: not a CloudEvent: attribute {key!r} is missing")
    if event["type"] != DRIFT:
        raise BadInput(f"{where}: event type {event['type']!r}; this job handles {DRIFT!r}")
    data = event.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            raise BadInput(f"{where}: data is not JSON") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("name", "version")):
        raise BadInput(f"{where}: data.model must name the drifting model: {{'name': ..., 'version': ...}}")
    return Trigger(event["id"], data)


def rejection(
    trigger: str | None,
    reason: str,
    retryable: bool,
    model: dict[str, Any] | None = None,
    parent: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The data of warmstart.model.rejected.v1: what was (not) made, and why."""
    return {
        "model": model,
        "parent": parent,
        "trigger": trigger,
        "reason": reason,
        "retryable": retryable,
        "metrics": metrics,
        "data": data,
    }


def emit(sink: str | None, mode: str, source: str, kind: str, data: dict[str, Any], trigger: str | None) -> None:
    """Send the outcome to K_SINK; the id is derived from the trigger and the outcome (the
    version, and a rejection's reason), so a re-run with the same outcome sends the same
    event and a consumer can drop the duplicate, and a different outcome is a new event."""
    import urllib.error
    import urllib.request

    if not sink:
        return
    version = (data.get("model") or {}).get("version")
    outcome = f"{trigger}/{kind}/{version}" + (f"/{data['reason']}" if data.get("reason") else "")
    attributes = {
        "type": kind,
        "source": source,
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, outcome)) if trigger else str(uuid.uuid4()),
        "datacontenttype": "application/json",
    }
    if data.get("model"):
        attributes["subject"] = data["model"]["name"]
    if trigger:
        attributes["causationid"] = trigger
    event = CloudEvent(attributes, data)
    headers, body = to_structured(event) if mode == "structured" else to_binary(event)
    request = urllib.request.Request(sink, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=SINK_TIMEOUT_S) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"K_SINK={sink}: the {kind} event was not accepted ({first_line(exc)})") from None
