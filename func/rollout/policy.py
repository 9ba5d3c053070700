"""What one interval's checks mean for the traffic split: hold, step up, promote or
roll back. Pure: the state is passed in and returned, so it is the same whether the
analysis runs once (a resumed job) or in a loop."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .analysis import Check

# the verdicts, as they appear in event types (warmstart.rollout.<verdict>.v1)
STARTED, HOLD, STEP, PROMOTE, ROLLBACK = "started", "held", "stepped", "promoted", "rolledback"


@dataclass(frozen=True)
class Policy:
    """Defaults are documented in the README (Safe rollouts)."""

    steps: tuple[int, ...] = (10, 25, 50, 100)
    # passing intervals in a row at one step before the next
    intervals_per_step: int = 1
    # failing intervals in a row before rolling back: one bad minute can be noise
    max_failures: int = 3
    # no verdict-bearing interval for this long (Prometheus down, no traffic) rolls back:
    # a canary nobody can judge should not keep its share
    no_data_deadline_s: float = 600.0

    def next_step(self, percent: int) -> int:
        return next((s for s in self.steps if s > percent), 100)


@dataclass(frozen=True)
class Progress:
    passes: int = 0
    failures: int = 0
    # monotonic time of the last interval that had data (or of the start)
    last_data_at: float = 0.0


@dataclass(frozen=True)
class Decision:
    verdict: str
    percent: int
    reason: str
    progress: Progress


def decide(
    policy: Policy, progress: Progress, percent: int, checks: list[Check] | None, missing: str | None, now: float
) -> Decision:
    """`checks` are this interval's, or None with `missing` saying why there are none."""
    if checks is None:
        waited = now - progress.last_data_at
        if waited >= policy.no_data_deadline_s:
            reason = f"no verdict for {waited:.0f}s (deadline {policy.no_data_deadline_s:g}s): {missing}"
            return Decision(ROLLBACK, 0, reason, progress)
        return Decision(HOLD, percent, f"{missing}; holding at {percent}%", progress)
    progress = replace(progress, last_data_at=now)
    failed = [c for c in checks if not c.passed]
    if failed:
        failures = progress.failures + 1
        reason = "; ".join(c.describe() for c in failed)
        if failures >= policy.max_failures:
            # intervals without data neither fail nor pass: a gap does not rescue a bad canary
            return Decision(ROLLBACK, 0, f"failed {failures} checked intervals in a row: {reason}", progress)
        held = replace(progress, passes=0, failures=failures)
        return Decision(HOLD, percent, f"failed ({failures} of {policy.max_failures}): {reason}", held)
    passes = progress.passes + 1
    if passes < policy.intervals_per_step:
        return Decision(
            HOLD,
            percent,
            f"passed {passes} of {policy.intervals_per_step} intervals at {percent}%",
            replace(progress, passes=passes, failures=0),
        )
    target = policy.next_step(percent)
    verdict = PROMOTE if target >= 100 else STEP
    return Decision(verdict, target, f"every check passed at {percent}%", Progress(last_data_at=now))
