"""`warmstart.rollout.*.v1`: one CloudEvent to K_SINK and one JSON log line per step.

| type | when |
|---|---|
| warmstart.rollout.started.v1 | the canary revision exists, tagged, 0 % (smoke test next) |
| warmstart.rollout.stepped.v1 | the canary's share went up |
| warmstart.rollout.held.v1 | an interval kept the split: a failed check, or no data |
| warmstart.rollout.promoted.v1 | 100 % to the canary, now tagged stable |
| warmstart.rollout.rolledback.v1 | 100 % back to stable, canary tag dropped |

data: {service, revision (the canary), stable, step (the canary's % after the event),
verdict, reason, checks: [{name, passed, canary, stable, limit, op, basis}], numbers:
{canary, stable: {requests, error_ratio, p99_s, labels}, window: the range they cover,
since the step began}, model, trigger (the trained event's id)}.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from ..observe.emit import Emitter

log = logging.getLogger("warmstart.rollout")


class RolloutEvents:
    def __init__(
        self,
        sink: str | None,
        source: str,
        service: str,
        revision: str,
        stable: str,
        extra: dict[str, Any],
        send: bool = True,
    ) -> None:
        """`send=False` (a dry run): log lines only, no events."""
        self.send = send
        self.emitter = Emitter(sink, source, lambda kind, outcome: None)
        self.base = {"service": service, "revision": revision, "stable": stable, **extra}

    def emit(
        self,
        verdict: str,
        step: int,
        reason: str,
        checks: list[dict[str, Any]] | None = None,
        numbers: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Log and send one event; wait for the send (a job's last event must not be lost
        when the process exits). Returns the event's data."""
        kind = f"warmstart.rollout.{verdict}.v1"
        data = {**self.base, "step": step, "verdict": verdict, "reason": reason, "checks": checks or []}
        data["numbers"] = numbers or {}
        log.info("%s %s at %d%%: %s%s", kind, self.base["revision"], step, reason, _summary(checks or []))
        if not self.send:
            return data
        future = self.emitter.send(kind, str(uuid.uuid4()), data, subject=self.base["revision"])
        if future is not None:
            future.result()
        return data


def _summary(checks: list[dict[str, Any]]) -> str:
    """` [name canary <= limit ok (basis), ...]`: a log line's numbers."""
    parts = []
    for c in checks:
        value = "none" if c["canary"] is None else f"{c['canary']:.3g}"
        basis = f" ({c['basis']})" if c["basis"] else ""
        parts.append(f"{c['name']} {value} {c['op']} {c['limit']:.3g} {'ok' if c['passed'] else 'FAILED'}{basis}")
    return f" [{', '.join(parts)}]" if parts else ""
