"""Canary vs stable from warmstart's per-revision metrics: error ratio, p99 latency and
the distance between their prediction mixes (PSI), over one window.

The queries read the raw series, not the recording rules of
knative/observability/rules.yaml: they work on any Prometheus that scrapes the pods, and
their window follows the analysis interval instead of the rules' fixed minute.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from .prometheus import Prometheus

# An empty bin counts as this share, as /drift does, so one empty class is a large
# distance, not an infinite one.
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class Thresholds:
    """When a canary passes. Defaults are documented in the README (Safe rollouts)."""

    min_requests: int = 100
    # canary 5xx share minus stable's: one percentage point
    max_error_increase: float = 0.01
    # canary p99 <= stable p99 x ratio + slack: the slack keeps a 2 ms vs 4 ms p99 (noise
    # on a fast model) from failing a canary
    max_p99_ratio: float = 1.5
    p99_slack_s: float = 0.025
    # the drift threshold's usual value: below 0.1 the mixes are alike, over 0.2 they differ
    max_psi: float = 0.2


@dataclass
class Numbers:
    """One revision over the window. `classes`: a classifier's predictions per class;
    `cumulative`: a regressor's prediction-value histogram as (upper bound, count)."""

    requests: float
    errors: float
    p99_s: float | None
    classes: dict[str, float] = field(default_factory=dict)
    cumulative: list[tuple[float, float]] = field(default_factory=list)

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    canary: float | None
    stable: float | None
    limit: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "canary": self.canary,
            "stable": self.stable,
            "limit": self.limit,
        }

    def describe(self) -> str:
        return f"{self.name}: canary {_num(self.canary)}, stable {_num(self.stable)}, limit {_num(self.limit)}"


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def measure(prometheus: Prometheus, revision: str, window: str) -> Numbers:
    """Read one revision's numbers; raises MetricsUnavailable when Prometheus cannot answer."""
    served = f'revision="{revision}",protocol!="other"'
    requests = prometheus.scalar(f"sum(increase(warmstart_requests_total{{{served}}}[{window}]))")
    errors = prometheus.scalar(f'sum(increase(warmstart_requests_total{{{served},status="5xx"}}[{window}]))')
    p99 = prometheus.scalar(
        f"histogram_quantile(0.99, sum by (le) (rate(warmstart_request_duration_seconds_bucket{{{served}}}[{window}])))"
    )
    classes = {
        r["metric"].get("class", ""): float(r["value"][1])
        for r in prometheus.query(
            f'sum by (class) (increase(warmstart_predictions_total{{revision="{revision}"}}[{window}]))'
        )
    }
    cumulative: list[tuple[float, float]] = []
    if not classes:
        buckets = prometheus.query(
            f'sum by (le) (increase(warmstart_prediction_value_bucket{{revision="{revision}"}}[{window}]))'
        )
        cumulative = sorted((float(r["metric"]["le"]), float(r["value"][1])) for r in buckets)
    return Numbers(
        requests=requests or 0.0,
        errors=errors or 0.0,
        p99_s=None if p99 is None or math.isnan(p99) else p99,
        classes=classes,
        cumulative=cumulative,
    )


def psi(canary: list[float], stable: list[float]) -> float:
    """Population stability index between two lists of counts over the same bins."""
    total_c, total_s = sum(canary) or 1.0, sum(stable) or 1.0
    value = 0.0
    for c, s in zip(canary, stable):
        c, s = max(c / total_c, PSI_FLOOR), max(s / total_s, PSI_FLOOR)
        value += (c - s) * math.log(c / s)
    return value


def _cdf_at(cumulative: list[tuple[float, float]], x: float) -> float:
    """A histogram's cumulative count at `x`, linear between its bucket bounds (as
    histogram_quantile assumes)."""
    bounds = [b for b, _ in cumulative]
    i = bisect.bisect_left(bounds, x)
    if i < len(bounds) and bounds[i] == x:
        return cumulative[i][1]
    if i == 0:
        return cumulative[0][1]
    if i == len(bounds) or math.isinf(bounds[i]):
        return cumulative[i - 1][1]
    (b0, c0), (b1, c1) = cumulative[i - 1], cumulative[i]
    return c0 + (c1 - c0) * (x - b0) / (b1 - b0)


def prediction_bins(canary: Numbers, stable: Numbers) -> tuple[list[float], list[float]] | None:
    """Both revisions' predictions over the same bins: a classifier's classes, or a
    regressor's value histogram on the stable revision's bucket bounds (each model's
    buckets are its training deciles; the canary's counts are interpolated onto the
    stable's when the two differ). None when the two do not predict the same kind of thing."""
    if canary.classes and stable.classes:
        names = sorted(set(canary.classes) | set(stable.classes))
        return [canary.classes.get(n, 0.0) for n in names], [stable.classes.get(n, 0.0) for n in names]
    if canary.cumulative and stable.cumulative:
        bounds = [b for b, _ in stable.cumulative]
        canary_cdf = [_cdf_at(canary.cumulative, b) for b in bounds]
        stable_cdf = [c for _, c in stable.cumulative]
        per_bin = lambda cdf: [hi - lo for lo, hi in zip([0.0, *cdf[:-1]], cdf)]  # noqa: E731
        return per_bin(canary_cdf), per_bin(stable_cdf)
    return None


def missing(canary: Numbers, stable: Numbers, thresholds: Thresholds, window: str) -> str | None:
    """Why these numbers cannot give a verdict, or None when they can."""
    if canary.requests < thresholds.min_requests:
        return f"too few canary requests: {canary.requests:.1f} in the last {window}, need {thresholds.min_requests}"
    if stable.requests <= 0:
        return f"no stable requests in the last {window} to compare with"
    if canary.p99_s is None or stable.p99_s is None:
        return "no latency histogram for one of the revisions"
    return None


def compare(canary: Numbers, stable: Numbers, thresholds: Thresholds) -> list[Check]:
    """Every check of one interval, passed or not, with its numbers."""
    error_limit = stable.error_ratio + thresholds.max_error_increase
    assert canary.p99_s is not None and stable.p99_s is not None  # missing() comes first
    p99_limit = stable.p99_s * thresholds.max_p99_ratio + thresholds.p99_slack_s
    checks = [
        Check("error_ratio", canary.error_ratio <= error_limit, canary.error_ratio, stable.error_ratio, error_limit),
        Check("p99_latency_s", canary.p99_s <= p99_limit, canary.p99_s, stable.p99_s, p99_limit),
    ]
    bins = prediction_bins(canary, stable)
    distance = psi(*bins) if bins else None
    checks.append(
        Check(
            "prediction_psi", distance is not None and distance <= thresholds.max_psi, distance, 0.0, thresholds.max_psi
        )
    )
    return checks
