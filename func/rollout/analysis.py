"""Canary vs stable from warmstart's per-revision metrics, counted since the current
step began: error ratio, p99 latency, and one check of the answers themselves, which
is, in order of preference:

1. labelled outcomes (POST /feedback joined to the predictions): the canary's accuracy
   (classifier) or mean absolute error (regressor) against the stable's, once each
   revision has `min_labels` of them;
2. without them, the canary's prediction mix against what its own card expects (the mix
   it answered on the data it was trained and tested on, exported by its pods as
   `warmstart_prediction_reference_fraction`), or against the stable's mix. After drift
   the stable's answers are the stale ones: the card, not the stable, is the yardstick
   of a model retrained on recent data.

The queries read the raw series, not the recording rules of
knative/observability/rules.yaml: they work on any Prometheus that scrapes the pods, and
their range is the time since the step began, so a low-traffic service's counts add up
until they are enough for a verdict.
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
    # labelled outcomes each revision needs before they decide instead of the mix: at 100
    # and an accuracy near 0.9, the two accuracies' difference has a standard error of 0.04
    min_labels: int = 100
    # a classifier canary's labelled accuracy may be this much under the stable's
    max_accuracy_drop: float = 0.05
    # a regressor canary's labelled mean absolute error may exceed the stable's by this share
    max_mae_increase: float = 0.1


@dataclass
class Numbers:
    """One revision over the window. `classes`: a classifier's predictions per class;
    `cumulative`: a regressor's prediction-value histogram as (upper bound, count);
    `expected_*`: the same shares as its card expects them (empty when the card has no
    prediction reference). `labels`: outcomes labelled by feedback, of which `correct`
    (a classifier's) were predicted right, or `abs_error` (a regressor's) the sum of
    |label - prediction|."""

    requests: float
    errors: float
    p99_s: float | None
    classes: dict[str, float] = field(default_factory=dict)
    cumulative: list[tuple[float, float]] = field(default_factory=list)
    expected_classes: dict[str, float] = field(default_factory=dict)
    expected_cumulative: list[tuple[float, float]] = field(default_factory=list)
    labels: float = 0.0
    correct: float | None = None
    abs_error: float | None = None

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labels if self.labels and self.correct is not None else None

    @property
    def mae(self) -> float | None:
        return self.abs_error / self.labels if self.labels and self.abs_error is not None else None


@dataclass(frozen=True)
class Check:
    """`canary` passes when it is `op` (<= or >=) `limit`; `basis` says what was compared."""

    name: str
    passed: bool
    canary: float | None
    stable: float | None
    limit: float
    op: str = "<="
    basis: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "canary": self.canary,
            "stable": self.stable,
            "limit": self.limit,
            "op": self.op,
            "basis": self.basis,
        }

    def describe(self) -> str:
        basis = f" ({self.basis})" if self.basis else ""
        return (
            f"{self.name}: canary {_num(self.canary)}, stable {_num(self.stable)}, "
            f"limit {self.op} {_num(self.limit)}{basis}"
        )


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def queries(revision: str, window: str) -> dict[str, str]:
    """Every PromQL query of one revision's numbers over `window`."""
    served = f'revision="{revision}",protocol!="other"'
    mine = f'revision="{revision}"'
    return {
        "requests": f"sum(increase(warmstart_requests_total{{{served}}}[{window}]))",
        "errors": f'sum(increase(warmstart_requests_total{{{served},status="5xx"}}[{window}]))',
        "p99_s": "histogram_quantile(0.99, sum by (le) "
        f"(rate(warmstart_request_duration_seconds_bucket{{{served}}}[{window}])))",
        "classes": f"sum by (class) (increase(warmstart_predictions_total{{{mine}}}[{window}]))",
        "cumulative": f"sum by (le) (increase(warmstart_prediction_value_bucket{{{mine}}}[{window}]))",
        "expected_classes": f"max by (class) (warmstart_prediction_reference_fraction{{{mine}}})",
        "expected_cumulative": f"max by (le) (warmstart_prediction_value_reference_fraction{{{mine}}})",
        "labels": f"sum(increase(warmstart_feedback_labels_total{{{mine}}}[{window}]))",
        "correct": f"sum(increase(warmstart_feedback_correct_total{{{mine}}}[{window}]))",
        "abs_error": f"sum(increase(warmstart_feedback_absolute_error_total{{{mine}}}[{window}]))",
    }


def measure(prometheus: Prometheus, revision: str, window: str) -> Numbers:
    """Read one revision's numbers; raises MetricsUnavailable when Prometheus cannot answer."""
    q = queries(revision, window)
    p99 = prometheus.scalar(q["p99_s"])
    classes = _by(prometheus, q["classes"], "class")
    cumulative, expected_cumulative = [], []
    if not classes:
        cumulative = sorted(_by(prometheus, q["cumulative"], "le", float).items())
        expected_cumulative = sorted(_by(prometheus, q["expected_cumulative"], "le", float).items())
    labels = prometheus.scalar(q["labels"]) or 0.0
    return Numbers(
        requests=prometheus.scalar(q["requests"]) or 0.0,
        errors=prometheus.scalar(q["errors"]) or 0.0,
        p99_s=None if p99 is None or math.isnan(p99) else p99,
        classes=classes,
        cumulative=cumulative,
        expected_classes=_by(prometheus, q["expected_classes"], "class") if classes else {},
        expected_cumulative=expected_cumulative,
        labels=labels,
        correct=prometheus.scalar(q["correct"]) if labels and classes else None,
        abs_error=prometheus.scalar(q["abs_error"]) if labels and not classes else None,
    )


def _by(prometheus: Prometheus, expr: str, label: str, key: Any = str) -> dict[Any, float]:
    return {key(r["metric"].get(label, "")): float(r["value"][1]) for r in prometheus.query(expr)}


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


def prediction_bins(
    canary_classes: dict[str, float],
    canary_cumulative: list[tuple[float, float]],
    other_classes: dict[str, float],
    other_cumulative: list[tuple[float, float]],
) -> tuple[list[float], list[float]] | None:
    """Two prediction mixes over the same bins: a classifier's classes, or a regressor's
    value histogram on the other's bucket bounds (each model's buckets are its training
    deciles; the canary's counts are interpolated onto the other's when the two differ).
    None when the two do not predict the same kind of thing."""
    if canary_classes and other_classes:
        names = sorted(set(canary_classes) | set(other_classes))
        return [canary_classes.get(n, 0.0) for n in names], [other_classes.get(n, 0.0) for n in names]
    if canary_cumulative and other_cumulative:
        bounds = [b for b, _ in other_cumulative]
        canary_cdf = [_cdf_at(canary_cumulative, b) for b in bounds]
        other_cdf = [c for _, c in other_cumulative]
        per_bin = lambda cdf: [hi - lo for lo, hi in zip([0.0, *cdf[:-1]], cdf)]  # noqa: E731
        return per_bin(canary_cdf), per_bin(other_cdf)
    return None


def _psi_of(bins: tuple[list[float], list[float]] | None) -> float | None:
    return psi(*bins) if bins else None


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
    """Every check of one interval, passed or not, with its numbers: error ratio, p99,
    and the answers: labelled outcomes when both revisions have enough, else the mix."""
    error_limit = stable.error_ratio + thresholds.max_error_increase
    assert canary.p99_s is not None and stable.p99_s is not None  # missing() comes first
    p99_limit = stable.p99_s * thresholds.max_p99_ratio + thresholds.p99_slack_s
    return [
        Check("error_ratio", canary.error_ratio <= error_limit, canary.error_ratio, stable.error_ratio, error_limit),
        Check("p99_latency_s", canary.p99_s <= p99_limit, canary.p99_s, stable.p99_s, p99_limit),
        labelled(canary, stable, thresholds) or prediction_mix(canary, stable, thresholds),
    ]


def labelled(canary: Numbers, stable: Numbers, thresholds: Thresholds) -> Check | None:
    """The canary's labelled accuracy (or error) against the stable's; None until each
    revision has `min_labels` labelled outcomes."""
    if min(canary.labels, stable.labels) < thresholds.min_labels:
        return None
    basis = f"{canary.labels:.0f} and {stable.labels:.0f} labelled outcomes, need {thresholds.min_labels} each"
    if canary.accuracy is not None and stable.accuracy is not None:
        limit = stable.accuracy - thresholds.max_accuracy_drop
        return Check(
            "labelled_accuracy", canary.accuracy >= limit, canary.accuracy, stable.accuracy, limit, ">=", basis
        )
    if canary.mae is not None and stable.mae is not None:
        limit = stable.mae * (1 + thresholds.max_mae_increase)
        return Check("labelled_mae", canary.mae <= limit, canary.mae, stable.mae, limit, "<=", basis)
    return None


def prediction_mix(canary: Numbers, stable: Numbers, thresholds: Thresholds) -> Check:
    """The canary's prediction mix passes when it is within `max_psi` of what its own card
    expects, or of the stable's mix. `canary` is the nearer of the two distances; `stable`
    the stable's own distance from its card (large after drift: the reason its mix is no
    yardstick then)."""
    own = _psi_of(
        prediction_bins(canary.classes, canary.cumulative, canary.expected_classes, canary.expected_cumulative)
    )
    other = _psi_of(prediction_bins(canary.classes, canary.cumulative, stable.classes, stable.cumulative))
    stable_own = _psi_of(
        prediction_bins(stable.classes, stable.cumulative, stable.expected_classes, stable.expected_cumulative)
    )
    found = [d for d in (own, other) if d is not None]
    nearest = min(found) if found else None
    basis = f"canary vs its card {_num(own)}, vs the stable's mix {_num(other)}; stable vs its card {_num(stable_own)}"
    passed = nearest is not None and nearest <= thresholds.max_psi
    return Check("prediction_psi", passed, nearest, stable_own, thresholds.max_psi, "<=", basis)
