"""Prometheus metrics, exact across the server's worker processes.

Built on prometheus-client's multiprocess mode: every worker writes its values to files
in the server's shared folder (func/server/shared_dir.py sets PROMETHEUS_MULTIPROC_DIR before
the first fork, so this module must not be imported by the master before that), and a
scrape of any worker sums every worker's files. Counts that feed drift detection as well
(feature bins, predictions per class) live in one store of their own (func/observe/tallies.py)
and reach /metrics through a collector of it, so they are counted once.

Every series carries `model_name`, `model_version` and `revision`; the other labels take
values from small fixed sets (protocol, status class, stage, event type...), never from
the request.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from ..config import Settings
from . import tallies
from .answerers import MAX_ANSWERERS, Answerers
from .tallies import Tallies

log = logging.getLogger("warmstart.metrics")

# A one-row prediction is answered in about 150 us, a 10,000-row one in about 30 ms, a
# batch request or a slow client in seconds: fine steps where the model lives, coarse
# ones above.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
ROWS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
MODEL_LABELS = ("model_name", "model_version", "revision")
PROTOCOLS = ("json", "v1", "v2", "cloudevent", "explain", "other")
PROTOCOL_INDEX = {name: i for i, name in enumerate(PROTOCOLS)}
STAGES = ("decode", "infer", "encode")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Event types come from callers; any type we do not handle is counted as "other".
KNOWN_EVENT_TYPES = frozenset(
    {"warmstart.predict.v1", "warmstart.batch.v1", "warmstart.feedback.v1", "warmstart.drift.detected.v1"}
)
# prometheus-client's files of this process, as it names them: one for the Counters and
# one for the max-mode Gauges below. Allocated before it maps them (tallies.allocate),
# at the size it would give them: our few dozen series take under 10 KB of it, so a file
# never grows past its allocated part.
PROMETHEUS_FILES = ("counter", "gauge_max")
PROMETHEUS_FILE_BYTES = 64 * 1024
# The variable prometheus-client reads its folder from. func/server/shared_dir.py sets it
# before the fork, and must not import this module for it: prometheus_client would be
# imported before the variable is set.
PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# How a dead worker's values fold into those of the workers that died before it: a
# counter adds up, a max-mode gauge keeps the largest, as a scrape would combine them.
_FOLD = {"counter": lambda a, b: a + b, "gauge_max": max}


def multiprocess() -> bool:
    """Whether this process writes its values to the shared folder."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    """Every series warmstart exports. Model labels are bound when the model is known
    (`bind_model`); before that, series carry the configured name and version, as the
    response headers do."""

    def __init__(self, settings: Settings) -> None:
        if settings.shared_dir and not multiprocess():
            raise RuntimeError(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
                "func.api.app must be imported after func.server.shared_dir.create()"
            )
        # Why this worker cannot count for the pod (its shared folder is full), or None.
        self.problem: str | None = None
        try:
            if settings.shared_dir:
                folder = Path(os.environ[PROMETHEUS_DIR])
                for prefix in PROMETHEUS_FILES:
                    tallies.allocate(folder / f"{prefix}_{os.getpid()}.db", PROMETHEUS_FILE_BYTES)
            self.traffic = Traffic(settings.shared_dir, self.model_labels)
        except tallies.NoRoom as exc:
            # This worker counts in its own memory, answers liveness and stays not ready.
            self.problem = str(exc)
            values.ValueClass = values.MutexValue
            self.traffic = Traffic(None, self.model_labels)
        self._revision = settings.k_revision or ""
        self._shared_dir = settings.shared_dir
        # In multiprocess mode the values live in files and a scrape reads them all; in
        # one process they live in this registry.
        self.registry = None if multiprocess() else CollectorRegistry()
        self._collectors: list[Any] = []
        model = (*MODEL_LABELS,)
        r = self.registry
        self.load_seconds = Gauge(
            "warmstart_model_load_seconds",
            "Seconds to load and warm up the model (slowest worker)",
            model,
            multiprocess_mode="max",
            registry=r,
        )
        self.startup_seconds = Gauge(
            "warmstart_startup_seconds",
            "Seconds from the server process's start to its model being ready, the cold start "
            "as the pod saw it (the slowest of the first workers)",
            model,
            multiprocess_mode="max",
            registry=r,
        )
        self.info = Gauge(
            "warmstart_model_info",
            "The served model: 1, labelled with its file's sha256 and its card's own version",
            (*model, "sha256", "card_version"),
            multiprocess_mode="max",
            registry=r,
        )
        self.batch_jobs = Counter("warmstart_batch_jobs", "Batch jobs by outcome", (*model, "outcome"), registry=r)
        self.batch_rows = Counter("warmstart_batch_rows", "Rows predicted by batch jobs", model, registry=r)
        self.events_received = Counter(
            "warmstart_events_received",
            "CloudEvents received, by type and outcome",
            (*model, "type", "outcome"),
            registry=r,
        )
        self.events_sent = Counter(
            "warmstart_events_sent",
            "CloudEvents this function sent on its own, by type and outcome",
            (*model, "type", "outcome"),
            registry=r,
        )
        self.prediction_log_rows = Counter(
            "warmstart_prediction_log_rows",
            "Rows of the prediction log (kind: predictions or feedback) by outcome: written, "
            "dropped (the buffer was full) or failed (a part could not be written)",
            (*model, "kind", "outcome"),
            registry=r,
        )
        self._model = (settings.model_name or "model", settings.model_version or "1", self._revision)
        self.add_collector(self.traffic)

    def bind_model(self, name: str, version: str, sha256: str, card_version: str) -> None:
        """From now on every series carries this model's name and version."""
        self._model = (name, version, self._revision)
        self.info.labels(*self._model, sha256, card_version).set(1)

    def add_collector(self, collector: Any) -> None:
        """A collector whose series are exported with these (tallies read from their own store)."""
        self._collectors.append(collector)
        if self.registry is not None:
            self.registry.register(collector)

    def model_labels(self) -> tuple[str, str, str]:
        return self._model

    def event_received(self, kind: str, outcome: str) -> None:
        kind = kind if kind in KNOWN_EVENT_TYPES else "other"
        self.events_received.labels(*self._model, kind, outcome).inc()

    def event_sent(self, kind: str, outcome: str) -> None:
        self.events_sent.labels(*self._model, kind, outcome).inc()

    def log_rows(self, kind: str, outcome: str, rows: int) -> None:
        if rows:
            self.prediction_log_rows.labels(*self._model, kind, outcome).inc(rows)

    def batch_job(self, outcome: str, rows: int) -> None:
        self.batch_jobs.labels(*self._model, outcome).inc()
        if rows:
            self.batch_rows.labels(*self._model).inc(rows)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its Content-Type: OpenMetrics when the scraper asks for it,
        else Prometheus text."""
        encoder, content_type = choose_encoder(accept or "")
        with tallies.counts_locked(self._shared_dir):
            return encoder(self._scrape_registry()), content_type

    def _scrape_registry(self) -> Any:
        if self.registry is not None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in self._collectors:
            registry.register(collector)
        return registry


def merge_dead(shared: str, pid: int) -> None:
    """Fold the files of the dead worker `pid` (its tallies, its prometheus-client files)
    into one file each for all dead workers, and remove them (in the master, when a worker
    exits). Its values still count exactly: a scrape sees them once, before or after, and
    a counter never goes back. Without room for the folded file they stay as they are."""
    folder = Path(shared)
    with tallies.counts_locked(folder, exclusive=True):
        try:
            tallies.merge_dead(folder, pid)
            prometheus = Path(os.environ[PROMETHEUS_DIR])
            for prefix, fold in _FOLD.items():
                dead = prometheus / f"{prefix}_{tallies.DEAD}.db"
                _merge_prometheus_file(prometheus / f"{prefix}_{pid}.db", dead, fold)
        except tallies.NoRoom as exc:
            log.warning("the counts of dead worker %d stay in their own files: %s", pid, exc)


def _merge_prometheus_file(path: Path, dead: Path, fold: Callable[[float, float], float]) -> None:
    if not path.exists():
        return
    folded: dict[str, float] = {}
    for file in (dead, path):
        if file.exists():
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(file)):
                folded[key] = fold(folded[key], value) if key in folded else value
    draft = dead.with_suffix(".draft")
    # the folded keys take no more room than the two files held
    size = path.stat().st_size + (dead.stat().st_size if dead.exists() else 0)
    tallies.allocate(draft, size)
    written = MmapedDict(str(draft))
    try:
        for key, value in folded.items():
            written.write_value(key, value, 0.0)
    finally:
        written.close()
    draft.replace(dead)
    path.unlink()


def _status_slot(protocol: int, status: int) -> int:
    """Where a protocol's count of one status class sits (the first slots of Traffic)."""
    return protocol * len(STATUS_CLASSES) + min(max(status // 100, 1), len(STATUS_CLASSES)) - 1


class _Histograms:
    """Slots of histograms in a tally vector: per label set, one count per bucket
    (+Inf last; not cumulative, so an observation moves one slot) and the sum."""

    def __init__(self, start: int, sets: int, buckets: tuple[float, ...]) -> None:
        self.start, self.buckets, self.width = start, buckets, len(buckets) + 2
        self.end = start + sets * self.width

    def samples(self, values: Any, label_set: int) -> tuple[list[tuple[str, float]], float]:
        """(cumulative buckets, sum) as HistogramMetricFamily takes them."""
        base = self.start + label_set * self.width
        counts = values[base : base + self.width - 1].cumsum()
        bounds = [*(repr(float(b)) for b in self.buckets), "+Inf"]
        return list(zip(bounds, counts.tolist())), float(values[base + self.width - 1])


class Traffic:
    """The per-request series: requests by protocol and status class, their duration,
    time per stage, rows, rows per request, and requests in flight. Kept in a tally
    vector shared by the workers (func/observe/tallies.py); a collector of /metrics."""

    def __init__(self, shared_dir: str | None, model_labels: Callable[[], tuple[str, str, str]]) -> None:
        n = len(PROTOCOLS)
        self._requests = 0
        self._rows = n * len(STATUS_CLASSES)
        self._in_flight = self._rows + n
        self.duration = _Histograms(self._in_flight + 1, n, LATENCY_BUCKETS)
        self.stages = _Histograms(self.duration.end, n * len(STAGES), LATENCY_BUCKETS)
        self.per_request = _Histograms(self.stages.end, n, ROWS_BUCKETS)
        self.tallies = Tallies(shared_dir, "traffic", self.per_request.end)
        self._slots = self.tallies.slots
        self._model_labels = model_labels

    def started(self) -> None:
        with self.tallies.lock:
            self._slots[self._in_flight] += 1

    def refused(self, status: int) -> None:
        """A request the server answered before the app saw it (malformed HTTP, 408):
        counted, not timed."""
        with self.tallies.lock:
            self._slots[_status_slot(PROTOCOL_INDEX["other"], status)] += 1

    def observe(self, protocol: str, status: int, seconds: float, rows: int, stages: tuple[float, ...]) -> None:
        """One answered request, no longer in flight; `stages` (decode, infer, encode
        seconds) when it predicted. Written out slot by slot: a call per histogram
        doubled the cost."""
        p = PROTOCOL_INDEX[protocol]
        slots = self._slots
        duration, stage, per_request = self.duration, self.stages, self.per_request
        with self.tallies.lock:
            slots[self._in_flight] -= 1
            slots[_status_slot(p, status)] += 1
            base = duration.start + p * duration.width
            slots[base + bisect_left(LATENCY_BUCKETS, seconds)] += 1
            slots[base + duration.width - 1] += seconds
            if rows:
                slots[self._rows + p] += rows
                base = per_request.start + p * per_request.width
                slots[base + bisect_left(ROWS_BUCKETS, rows)] += 1
                slots[base + per_request.width - 1] += rows
                base = stage.start + p * 3 * stage.width
                for value in stages:
                    slots[base + bisect_left(LATENCY_BUCKETS, value)] += 1
                    slots[base + stage.width - 1] += value
                    base += stage.width

    def collect(self) -> Iterator[Any]:
        values = self.tallies.total()
        model = list(self._model_labels())
        requests = CounterMetricFamily(
            "warmstart_requests",
            "HTTP requests answered, by protocol and status class",
            labels=[*MODEL_LABELS, "protocol", "status"],
        )
        rows = CounterMetricFamily("warmstart_rows", "Rows predicted", labels=[*MODEL_LABELS, "protocol"])
        duration = HistogramMetricFamily(
            "warmstart_request_duration_seconds",
            "Time from a request's arrival in the app to its encoded answer",
            labels=[*MODEL_LABELS, "protocol"],
        )
        stages = HistogramMetricFamily(
            "warmstart_request_stage_seconds",
            "Time per stage of a prediction request: decode (read and validate the body), infer, encode",
            labels=[*MODEL_LABELS, "protocol", "stage"],
        )
        per_request = HistogramMetricFamily(
            "warmstart_request_rows", "Rows per prediction request", labels=[*MODEL_LABELS, "protocol"]
        )
        for p, protocol in enumerate(PROTOCOLS):
            for c, status in enumerate(STATUS_CLASSES):
                count = values[_status_slot(p, (c + 1) * 100)]
                if count:
                    requests.add_metric([*model, protocol, status], count)
            buckets, total = self.duration.samples(values, p)
            if buckets[-1][1]:
                duration.add_metric([*model, protocol], buckets, total)
            buckets, total = self.per_request.samples(values, p)
            if buckets[-1][1]:
                rows.add_metric([*model, protocol], values[self._rows + p])
                per_request.add_metric([*model, protocol], buckets, total)
                for s, stage in enumerate(STAGES):
                    stage_buckets, stage_total = self.stages.samples(values, p * len(STAGES) + s)
                    stages.add_metric([*model, protocol, stage], stage_buckets, stage_total)
        in_flight = GaugeMetricFamily(
            "warmstart_requests_in_flight", "Requests being served, over live workers", labels=list(MODEL_LABELS)
        )
        in_flight.add_metric(model, self.tallies.live()[self._in_flight])
        yield from (requests, duration, stages, rows, per_request, in_flight)


class FeedbackScores:
    """Live accuracy from feedback: labels matched or not, and per matched row its first
    label scored against the answer the pod gave. A classifier's counts per class (true
    class, predicted class, correct) make accuracy, precision and recall PromQL; a
    regressor's sums of absolute and squared errors make MAE and RMSE. Kept in a tally
    vector shared by the workers; a collector of /metrics.

    A label whose item reports the answer another pod gave (`add_reported`) is scored
    against that answer, in the series of the revision that gave it: a slot of its own
    per answerer (func/observe/answerers.py), or this pod's own where it gave it."""

    def __init__(
        self,
        shared_dir: str | None,
        class_labels: tuple[Any, ...] | None,
        model_labels: Callable[[], tuple[str, str, str]],
    ) -> None:
        self.classes = [str(c) for c in class_labels] if class_labels is not None else None
        self.width = 3 * len(self.classes) if self.classes is not None else 3
        # matched, unmatched, reported, then the scores
        self.tallies = Tallies(shared_dir, "feedback", 3 + self.width)
        # per answerer: reported, then the scores
        self.answerers = Answerers(shared_dir)
        self.reported = Tallies(shared_dir, "reported", MAX_ANSWERERS * (1 + self.width))
        self._model_labels = model_labels

    def add(
        self, matched: np.ndarray, answers: np.ndarray, labels: np.ndarray, first: np.ndarray, reported: np.ndarray
    ) -> None:
        """Count a feedback request: `answers` and `labels` are class indices or values;
        `reported`, the labels add_reported scored and counted (not unmatched)."""
        scored = matched & first
        counts = np.zeros(self.tallies.size)
        counts[0] = matched.sum()
        counts[1] = len(matched) - counts[0] - reported.sum()  # add_reported counted those
        counts[3:] = self._scores(answers[scored], labels[scored])
        with self.tallies.lock:
            self.tallies.array += counts

    def add_reported(
        self, answers: np.ndarray, labels: np.ndarray, answered_by: list[tuple[str, str]], items: np.ndarray
    ) -> np.ndarray:
        """Score labels against the answers their items report, for the (revision, model
        version) that gave each, a row once; `items`, how many items labelled each row
        (all counted as reported). Which rows were scored (all, unless past MAX_ANSWERERS)."""
        _, own_version, own_revision = self._model_labels()
        scored = np.zeros(len(answers), dtype=bool)
        own = np.zeros(1 + self.width)  # reported, then the scores
        counts = np.zeros(self.reported.size)
        for answerer in dict.fromkeys(answered_by):
            rows = np.array([by == answerer for by in answered_by])
            revision, version = answerer
            if revision == own_revision and version in ("", own_version):
                own[0] += items[rows].sum()
                own[1:] += self._scores(answers[rows], labels[rows])
            else:
                slot = self.answerers.slot(answerer)
                if slot is None:
                    continue
                at = slot * (1 + self.width)
                counts[at] += items[rows].sum()
                counts[at + 1 : at + 1 + self.width] += self._scores(answers[rows], labels[rows])
            scored |= rows
        with self.tallies.lock:
            self.tallies.array[2:] += own
            self.reported.array += counts
        return scored

    def _scores(self, answer: np.ndarray, truth: np.ndarray) -> np.ndarray:
        counts = np.zeros(self.width)
        if self.classes is not None:
            k = len(self.classes)
            truth, answer = truth.astype(np.int64), answer.astype(np.int64)
            known = answer >= 0  # an answer the card does not list is no class's
            counts[:k] = np.bincount(truth, minlength=k)[:k]
            truth, answer = truth[known], answer[known]
            counts[k : 2 * k] = np.bincount(answer, minlength=k)[:k]
            counts[2 * k :] = np.bincount(truth[truth == answer], minlength=k)[:k]
        else:
            error = answer - truth
            counts[:] = (len(truth), np.abs(error).sum(), (error * error).sum())
        return counts

    def collect(self) -> Iterator[Any]:
        own = self.tallies.total()
        name, version, revision = self._model_labels()
        reported = self.reported.total().reshape(MAX_ANSWERERS, 1 + self.width)
        # (labels, outcomes, scores): this pod's own answers, then each answerer's
        series = [((name, version, revision), {"matched": own[0], "unmatched": own[1], "reported": own[2]}, own[3:])]
        for slot, (other_revision, other_version) in enumerate(self.answerers.named()):
            series.append(((name, other_version, other_revision), {"reported": reported[slot, 0]}, reported[slot, 1:]))
        total = CounterMetricFamily(
            "warmstart_feedback",
            "Labels received by feedback: matched to a prediction this pod made, scored against the answer the "
            "label reported (counted for the revision that gave it), or neither",
            labels=[*MODEL_LABELS, "outcome"],
        )
        for model, outcomes, _ in series:
            for outcome, value in outcomes.items():
                total.add_metric([*model, outcome], value)
        yield total
        if self.classes is None:
            families = (
                ("warmstart_feedback_labels", "Predictions scored against their label"),
                ("warmstart_feedback_absolute_error", "Sum of |prediction - label| over scored predictions"),
                ("warmstart_feedback_squared_error", "Sum of (prediction - label)^2 over scored predictions"),
            )
            for f, (family_name, help_text) in enumerate(families):
                family = CounterMetricFamily(family_name, help_text, labels=list(MODEL_LABELS))
                for model, _, scores in series:
                    family.add_metric(list(model), scores[f])
                yield family
            return
        k = len(self.classes)
        families = (
            ("warmstart_feedback_labels", "Scored predictions by true class (the label)"),
            ("warmstart_feedback_predicted", "Scored predictions by predicted class"),
            ("warmstart_feedback_correct", "Scored predictions whose predicted class was the label, by class"),
        )
        for f, (family_name, help_text) in enumerate(families):
            family = CounterMetricFamily(family_name, help_text, labels=[*MODEL_LABELS, "class"])
            for model, _, scores in series:
                for c, label in enumerate(self.classes):
                    family.add_metric([*model, label], scores[f * k + c])
            yield family
