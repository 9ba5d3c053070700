"""Feature and prediction drift: live inputs and answers against the training data's.

Every predicted row falls into one bin per feature: the card's reference quantile bins,
plus `missing`, `below_min` and `above_max` (outside the training range); the answer
falls into a prediction bin (its class, or a regressor's value bin). The counts live in
a tally vector per worker (func/observe/tallies.py), so the pod's counts are the sum of its
workers', and /metrics exports them (PSI over a revision's pods is then a PromQL query).

Windows are pod-wide and exact: a worker adds its binned rows to its counts under the
shared folder's lock, splitting them where the pod's row count reaches the next multiple
of DRIFT_WINDOW, and the worker whose rows complete a window closes it from every
worker's counts: PSI per feature and for the predictions against the reference, the
share of values out of the training range, a status. So every window holds exactly
DRIFT_WINDOW rows, and one 10,000-row request makes ten windows of 1,000.

A window that crosses DRIFT_THRESHOLD opens a drift episode and sends one
`warmstart.drift.detected.v1` event (func/observe/emit.py); the episode stays open, and
sends nothing more, until a window falls back under the threshold, or for DRIFT_COOLDOWN
seconds, after which a window still over it opens the next episode. One episode, one
event, one retraining: before episodes, 20 requests of 10,000 out-of-range rows sent 200
events, and each started a retraining Job.

Rows are binned in batches, off the request: a request appends its rows and answers to
a queue (a fraction of a microsecond, no lock), and a thread bins what queued every
FLUSH_S, counting the bin edges each value reaches for every feature and row at once,
and takes the window lock once per batch. Binning row by row on the request, even in plain Python (8 us a row),
cost more under load than this. /drift and /metrics bin what their own worker has
queued before they answer; the other workers' rows arrive within FLUSH_S. A worker that
stops on SIGTERM bins its queue as it exits; one that is killed (SIGKILL, the OOM
killer) loses what it queued since its last batch, at most FLUSH_S of its rows (or
QUEUE_ROWS), while the rows it binned before stay counted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..model.card import ModelCard
from ..model.runtime import Prediction
from .logs import iso_time
from .tallies import Tallies

log = logging.getLogger("warmstart.drift")

DRIFT_EVENT = "warmstart.drift.detected.v1"
# PSI bands as the credit-scoring practice that defined the index uses them: under 0.1
# no change, 0.1 to the threshold (0.2 by default) a warning, above it a shift.
WARNING_PSI = 0.1
# Empty bins would make PSI infinite; a share this small stands in for zero.
PSI_FLOOR = 1e-4
# Each batch costs the busy worker far more than its own few hundred microseconds (its
# thread takes the interpreter lock from the request threads), so batches are rare:
# server CPU a one-row request at c=32 with drift on, against drift off: +74 us with a
# batch every 50 ms, +18 every 200 ms, +5 every 500 ms (loadtests/bench_features.py).
FLUSH_S = 0.5
# Rows queued past this (large requests, 7.5 MB of 30 float32 features) wake the thread
# early, so the queue's memory stays bounded.
QUEUE_ROWS = 65_536
TOP_FEATURES = 5
# Rows reach drift as the model reads them, float32 (func/codecs.py validates every
# protocol's rows into float32), so the card's edges and training range are compared in
# float32 too: compared in float64, a discrete feature's training maximum (0.0507 of
# diabetes' `sex`) rounds up past the card's float64 maximum and counts as above_max.
ROW_DTYPE = np.float32
SPECIAL_BINS = ("missing", "below_min", "above_max")
_ONE = np.array([0])  # psi_per_group's offsets for a single group


@dataclass(frozen=True)
class Layout:
    """Where each feature's and the prediction's bins sit in the tally vector."""

    features: tuple[str, ...]
    edges: np.ndarray  # each feature's inner bin edges, a line each, padded with +inf
    starts: np.ndarray  # first slot of each feature: missing, below_min, reference bins..., above_max
    widths: np.ndarray  # reference bins per feature
    reference: np.ndarray  # every feature's reference shares over its slots, side by side as the slots sit
    mins: np.ndarray
    maxs: np.ndarray
    prediction_start: int
    prediction_edges: np.ndarray | None  # a regressor's value bins; None for classes
    prediction_reference: np.ndarray | None
    size: int
    bin_names: tuple[list[str], ...]  # each feature's: missing, below_min, b0..., above_max

    @classmethod
    def of(cls, card: ModelCard) -> Layout | None:
        """The layout for a card with reference statistics for every feature, else None."""
        if not card.reference or any("bin_edges" not in card.reference.get(n, {}) for n in card.feature_names):
            return None
        refs = [card.reference[n] for n in card.feature_names]
        starts, widths, shares = [], [], []
        slot = 1  # slot 0 counts rows
        for r in refs:
            width = len(r["bin_edges"]) + 1
            starts.append(slot)
            widths.append(width)
            shares.append(np.array([0.0, 0.0, *r["fractions"], 0.0]))
            slot += width + len(SPECIAL_BINS)
        pred = card.prediction_reference
        if card.is_classifier:
            prediction_edges = None
            n_pred = max(len(card.class_labels), 1)
            pred_ref = np.array(pred["fractions"]) if len(pred.get("fractions", ())) == n_pred else None
        else:
            prediction_edges = np.array(pred.get("bin_edges", []), dtype=np.float64)
            n_pred = len(prediction_edges) + 1
            pred_ref = np.array(pred["fractions"]) if "fractions" in pred else None
        return cls(
            features=card.feature_names,
            edges=_padded([r["bin_edges"] for r in refs]).astype(ROW_DTYPE),
            starts=np.array(starts),
            widths=np.array(widths),
            reference=np.concatenate(shares),
            mins=np.array([r["min"] for r in refs], dtype=ROW_DTYPE),
            maxs=np.array([r["max"] for r in refs], dtype=ROW_DTYPE),
            prediction_start=slot,
            prediction_edges=prediction_edges,
            prediction_reference=pred_ref,
            size=slot + n_pred + 1,  # + a regressor's sum of predicted values
            bin_names=tuple(["missing", "below_min", *(f"b{k}" for k in range(w)), "above_max"] for w in widths),
        )

    def slots(self, rows: np.ndarray, prediction_slots: np.ndarray) -> np.ndarray:
        """The slot each value of `rows` counts in, one line per feature, and the last
        line the slots of the rows' predictions: (features + 1, rows)."""
        columns = rows.T.astype(ROW_DTYPE, order="C")  # the edges' dtype: values on an edge bin alike
        # Reference bin k holds edges[k-1] <= x < edges[k]: a value's bin is how many edges
        # it reaches, counted one edge rank at a time for every feature at once. 4x faster
        # than a binary search per feature for 10,000 rows, 2.5x for one (+inf padding is
        # reached only by +inf, which the above_max line below recounts).
        reached = np.zeros(columns.shape, dtype=np.uint8 if self.edges.shape[1] < 255 else np.int64)
        at_or_above = np.empty(columns.shape, dtype=bool)
        for rank in self.edges.T:
            np.greater_equal(columns, rank[:, None], out=at_or_above)
            reached += at_or_above
        slots = np.empty((len(columns) + 1, len(rows)), dtype=np.int64)
        features, starts = slots[:-1], self.starts[:, None]
        np.add(reached, starts + 2, out=features)
        np.copyto(features, starts + 1, where=columns < self.mins[:, None])
        np.copyto(features, starts + 2 + self.widths[:, None], where=columns > self.maxs[:, None])
        np.copyto(features, starts, where=np.isnan(columns))
        slots[-1] = prediction_slots
        return slots

    def prediction_slots(self, labels: np.ndarray, class_index: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if self.prediction_edges is None:
            return self.prediction_start + class_index(labels)
        values = np.asarray(labels, dtype=np.float64)
        # side="left": bin k holds edges[k-1] < v <= edges[k], as Prometheus' `le` buckets do
        return self.prediction_start + np.searchsorted(self.prediction_edges, values, side="left")


def _padded(edge_lists: list[list[float]]) -> np.ndarray:
    """Edge lists of different lengths as one (features, most edges) array, padded with +inf."""
    padded = np.full((len(edge_lists), max((len(e) for e in edge_lists), default=0)), np.inf)
    for f, edges in enumerate(edge_lists):
        padded[f, : len(edges)] = edges
    return padded


def _class_indexer(class_labels: tuple[Any, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """Labels -> their index in the card's class_labels (an unknown label counts as the first)."""
    if class_labels and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in class_labels):
        order = np.argsort(class_labels)
        ordered = np.asarray(class_labels, dtype=np.float64)[order]

        def numeric(labels: np.ndarray) -> np.ndarray:
            found = np.searchsorted(ordered, np.asarray(labels, dtype=np.float64)).clip(0, len(ordered) - 1)
            return order[found]

        return numeric
    classes = {label: i for i, label in enumerate(class_labels)}
    return lambda labels: np.array([classes.get(x, 0) for x in labels.tolist()], dtype=np.int64)


def psi_per_group(live: np.ndarray, reference: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Population stability index of each group of live counts against its reference
    shares; groups sit side by side, each starting at its offset in `starts`."""
    totals = np.add.reduceat(live, starts)
    lengths = np.diff(np.append(starts, len(live)))
    p = np.maximum(live / np.maximum(np.repeat(totals, lengths), 1), PSI_FLOOR)
    q = np.maximum(reference, PSI_FLOOR)
    return np.where(totals > 0, np.add.reduceat((p - q) * np.log(p / q), starts), 0.0)


def status_of(value: float, threshold: float) -> str:
    return "drift" if value >= threshold else "warning" if value >= WARNING_PSI else "ok"


class Drift:
    """Counts rows and answers into bins, closes windows, and reports."""

    def __init__(
        self,
        card: ModelCard,
        model_sha256: str,
        revision: str | None,
        shared_dir: str | None,
        window: int,
        threshold: float,
        cooldown_s: float,
        on_drift: Callable[[str, dict[str, Any]], None],
        model_labels: Callable[[], tuple[str, str, str]],
    ) -> None:
        self.card, self.window, self.threshold = card, window, threshold
        self.cooldown_s = cooldown_s
        self.layout = Layout.of(card)
        self._class_index = _class_indexer(card.class_labels)
        self._revision = revision
        size = self.layout.size if self.layout else (len(card.class_labels) + 2)
        self.tallies = Tallies(shared_dir, "drift", size)
        self._state = _WindowState(Path(shared_dir) if shared_dir else None, window)
        self._identity = f"{model_sha256}/{os.uname().nodename}/{Path(shared_dir).name if shared_dir else os.getpid()}"
        self._model = {"name": card.name, "version": card.version, "sha256": model_sha256}
        self._on_drift = on_drift
        self.model_labels = model_labels
        # (rows, labels) of each request; deque's append and popleft are atomic
        self._queue: deque[tuple[np.ndarray, Any]] = deque()
        self._queued_rows = 0  # roughly: threads add to it without a lock
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, rows: np.ndarray, prediction: Prediction) -> None:
        """Queue predicted rows for binning (the request path's whole cost)."""
        self._queue.append((rows, prediction.labels))
        self._queued_rows += len(rows)
        if self._thread is None:
            self._start()
        if self._queued_rows >= QUEUE_ROWS:
            self._wake.set()

    def _start(self) -> None:
        # Started in the serving process: a thread would not survive gunicorn's fork.
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._flush_every, name="drift", daemon=True)
                self._thread.start()

    def _flush_every(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the thread must outlive any one bad batch
                log.exception("drift binning failed")

    def flush(self) -> None:
        """Bin what is queued, then close the pod's windows that are complete."""
        pop = self._queue.popleft
        self._queued_rows = 0
        queue = []
        try:
            for _ in range(len(self._queue)):
                queue.append(pop())
        except IndexError:  # a flush on another thread (a scrape, /drift) took the rest
            pass
        if not queue:
            return
        layout = self.layout
        if layout is None:
            labels = _joined_labels(queue)
            counts = np.zeros(self.tallies.size)
            counts[0] = len(labels)
            if self.card.is_classifier:
                counts += np.bincount(1 + self._class_index(labels), minlength=self.tallies.size)
            with self.tallies.lock:
                self.tallies.array += counts
            return
        rows = np.concatenate([r for r, _ in queue]) if len(queue) > 1 else queue[0][0]
        labels = _joined_labels(queue)
        # a line of slots per feature, then the predictions'
        slots = layout.slots(rows, layout.prediction_slots(labels, self._class_index))
        values = np.asarray(labels, dtype=np.float64) if layout.prediction_edges is not None else None
        for report, opens in self._add_in_windows(slots, values):
            log.info(
                "drift window %d closed: %s, largest feature PSI %.3f, prediction PSI %s",
                report["window"]["index"],
                report["status"],
                report["top_features"][0]["psi"] if report["top_features"] else 0.0,
                report["prediction_psi"],
            )
            if opens:
                self._on_drift(self.event_id(report["window"]["index"]), self.event_data(report))

    def _add_in_windows(self, slots: np.ndarray, values: np.ndarray | None) -> list[tuple[dict[str, Any], bool]]:
        """Add rows to the pod's counts under the pod's window lock, split at window
        boundaries: every window holds exactly DRIFT_WINDOW rows, whichever workers
        binned them and however large the request that brought them. Returns the
        windows this closed, each with whether it opened a drift episode."""
        closed = []
        with self._state.locked() as state:
            total = self.tallies.total()  # exact: every worker adds under this lock
            done = 0
            while True:
                if total[0] >= state["close_at"]:
                    closed.append(self._close_window(state, total))
                if done == slots.shape[1]:
                    break
                take = min(slots.shape[1] - done, int(state["close_at"] - total[0]))
                counts = np.bincount(slots[:, done : done + take].ravel(), minlength=self.tallies.size).astype(float)
                counts[0] = take
                if values is not None:
                    counts[-1] = values[done : done + take].sum()
                with self.tallies.lock:
                    self.tallies.array += counts
                total += counts
                done += take
        return closed

    def _close_window(self, state: dict[str, Any], total: np.ndarray) -> tuple[dict[str, Any], bool]:
        report = self._report(total - np.array(state["start"]) if state["start"] else total, state["index"])
        episode, now = state.get("episode"), time.time()
        opens = report["status"] == "drift" and (episode is None or now - episode["opened_at"] >= self.cooldown_s)
        if opens:
            state["episode"] = {"window": state["index"], "opened_at": now}
        elif report["status"] != "drift":
            state["episode"] = None
        report["window"]["started_at"], report["window"]["closed_at"] = state.get("started_at"), iso_time(now)
        state["index"] += 1
        state["start"] = total.tolist()
        # every row predicted from now on is binned into a later window (a few predicted up
        # to FLUSH_S before may be too: a run training "since" this time leaves those out)
        state["started_at"] = iso_time(now)
        state["close_at"] = (total[0] // self.window + 1) * self.window
        state["last"] = report
        state["windows"][report["status"]] = state["windows"].get(report["status"], 0) + 1
        return report, opens

    def _report(self, counts: np.ndarray, index: int) -> dict[str, Any]:
        layout = self.layout
        assert layout is not None
        # every feature's slots at once: features sit side by side from slot 1
        live = counts[1 : layout.prediction_start]
        offsets = layout.starts - 1
        shares = live / np.maximum(np.repeat(np.add.reduceat(live, offsets), layout.widths + len(SPECIAL_BINS)), 1)
        feature_psi = psi_per_group(live, layout.reference, offsets)
        out_of_range = float(live[offsets + 1].sum() + live[offsets + layout.widths + 2].sum())
        shares_list, reference_list = np.round(shares, 6).tolist(), np.round(layout.reference, 6).tolist()
        features: dict[str, Any] = {}
        for f, name in enumerate(layout.features):
            a, b = int(offsets[f]), int(offsets[f] + layout.widths[f] + len(SPECIAL_BINS))
            features[name] = {
                "psi": round(float(feature_psi[f]), 6),
                "bins": layout.bin_names[f],
                "reference": reference_list[a:b],
                "live": shares_list[a:b],
            }
        rows = float(counts[0])
        prediction_psi = None
        prediction_live = counts[layout.prediction_start : layout.size - 1]
        if layout.prediction_reference is not None:
            prediction_psi = round(float(psi_per_group(prediction_live, layout.prediction_reference, _ONE)[0]), 6)
        top = sorted(features, key=lambda n: features[n]["psi"], reverse=True)[:TOP_FEATURES]
        worst = max([features[top[0]]["psi"] if top else 0.0, prediction_psi or 0.0])
        return {
            "window": {"index": index, "rows": int(rows), "size": self.window},
            "status": status_of(worst, self.threshold),
            "threshold": self.threshold,
            "out_of_range_rate": round(out_of_range / (rows * len(layout.features)), 6) if rows else 0.0,
            "prediction_psi": prediction_psi,
            "prediction": {
                "reference": None if layout.prediction_reference is None else layout.prediction_reference.tolist(),
                "live": np.round(prediction_live / rows, 6).tolist() if rows else [0.0] * len(prediction_live),
            },
            "top_features": [{"feature": n, "psi": features[n]["psi"]} for n in top],
            "features": features,
        }

    def event_id(self, index: int) -> str:
        """Deterministic: the model's digest and the window's identity (this server of this
        pod, window number), so a retried send is one event downstream."""
        return hashlib.sha256(f"{self._identity}/{index}".encode()).hexdigest()[:32]

    def event_data(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self._model,
            "revision": self._revision,
            "window": report["window"],
            "threshold": report["threshold"],
            "status": report["status"],
            "psi": {name: f["psi"] for name, f in report["features"].items()},
            "top_features": report["top_features"],
            "prediction_psi": report["prediction_psi"],
            "out_of_range_rate": report["out_of_range_rate"],
        }

    def report(self) -> dict[str, Any]:
        """GET /drift: the window filling now and the last complete one."""
        if self.layout is None:
            return {
                "enabled": False,
                "reason": "the model card has no reference statistics for its features; "
                "export the model with scripts/export_onnx.py to add them",
            }
        self.flush()
        state = self._state.read()
        total = self.tallies.total()
        current = total - np.array(state["start"]) if state["start"] else total
        return {
            "enabled": True,
            "window_size": self.window,
            "threshold": self.threshold,
            "rows_seen": int(total[0]),
            "current": self._report(current, state["index"]),
            "last_complete": state["last"],
            "windows": state["windows"],
            # the drift episode open now: the window that opened it (and sent its event)
            "episode": state.get("episode"),
        }

    def collect(self) -> Iterator[Any]:
        """The counts and the last window as Prometheus series (a collector of /metrics)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        model = list(self.model_labels())
        names = ["model_name", "model_version", "revision"]
        self.flush()
        total = self.tallies.total()
        layout = self.layout
        if self.card.is_classifier:
            predictions = CounterMetricFamily(
                "warmstart_predictions", "Rows predicted, by predicted class", labels=[*names, "class"]
            )
            start = layout.prediction_start if layout else 1
            for i, label in enumerate(self.card.class_labels):
                predictions.add_metric([*model, str(label)], total[start + i])
            yield predictions
            if layout is not None and layout.prediction_reference is not None:
                expected = GaugeMetricFamily(
                    "warmstart_prediction_reference_fraction",
                    "Share of each class in the model's answers on its card's data (the canary analysis' yardstick)",
                    labels=[*names, "class"],
                )
                for label, share in zip(self.card.class_labels, layout.prediction_reference.tolist()):
                    expected.add_metric([*model, str(label)], share)
                yield expected
        elif layout is not None and layout.prediction_edges is not None:
            counts = total[layout.prediction_start : layout.size - 1].cumsum()
            bounds = [*(repr(float(e)) for e in layout.prediction_edges), "+Inf"]
            values = HistogramMetricFamily(
                "warmstart_prediction_value",
                "Predicted values (buckets: the training predictions' deciles)",
                labels=names,
            )
            values.add_metric(model, list(zip(bounds, counts.tolist())), float(total[-1]))
            yield values
            if layout.prediction_reference is not None:
                expected = GaugeMetricFamily(
                    "warmstart_prediction_value_reference_fraction",
                    "Share of what the model answered on its card's data at or below each of "
                    "warmstart_prediction_value's bounds (the canary analysis' yardstick)",
                    labels=[*names, "le"],
                )
                for bound, share in zip(bounds, layout.prediction_reference.cumsum().tolist()):
                    expected.add_metric([*model, bound], share)
                yield expected
        if layout is None:
            return
        rows = CounterMetricFamily(
            "warmstart_drift_bin_rows",
            "Predicted rows by feature and bin (the drift counts)",
            labels=[*names, "feature", "bin"],
        )
        reference = GaugeMetricFamily(
            "warmstart_drift_reference_fraction",
            "Share of the training rows in each feature bin",
            labels=[*names, "feature", "bin"],
        )
        for f, name in enumerate(layout.features):
            start = int(layout.starts[f])
            for k, bin_name in enumerate(layout.bin_names[f]):
                rows.add_metric([*model, name, bin_name], total[start + k])
                reference.add_metric([*model, name, bin_name], float(layout.reference[start - 1 + k]))
        yield rows
        yield reference
        state = self._state.read()
        windows = CounterMetricFamily(
            "warmstart_drift_windows", "Drift windows closed, by status", labels=[*names, "status"]
        )
        for status in ("ok", "warning", "drift"):
            windows.add_metric([*model, status], state["windows"].get(status, 0))
        yield windows
        last = state["last"]
        if last:
            feature_psi = GaugeMetricFamily(
                "warmstart_drift_psi", "PSI per feature, last complete window", labels=[*names, "feature"]
            )
            for name, entry in last["features"].items():
                feature_psi.add_metric([*model, name], entry["psi"])
            yield feature_psi
            if last["prediction_psi"] is not None:
                prediction_psi = GaugeMetricFamily(
                    "warmstart_drift_prediction_psi", "PSI of the predictions, last complete window", labels=names
                )
                prediction_psi.add_metric(model, last["prediction_psi"])
                yield prediction_psi


def _joined_labels(queue: list[tuple[np.ndarray, Any]]) -> np.ndarray:
    """The queued requests' labels in one 1-D array. They come 1-D from the model (one
    call, where flattening each first cost 0.5 us a request); anything else is flattened."""
    try:
        joined = np.concatenate([labels for _, labels in queue])
    except ValueError:  # 0-d ones, or 1-D beside 2-D
        joined = None
    if joined is None or joined.ndim != 1:
        joined = np.concatenate([np.asarray(labels).reshape(-1) for _, labels in queue])
    return joined


class _WindowState:
    """Which window the pod is in and the counts at its start: a JSON file under a lock
    file in the shared folder, or memory when the process serves alone."""

    def __init__(self, folder: Path | None, window: int) -> None:
        self._folder, self._window = folder, window
        self._memory = self._empty(window)
        self._lock = threading.Lock()
        # the state as this worker last read or wrote it, and which file that was
        self._held: dict[str, Any] | None = None
        self._held_file: tuple[int, int] | None = None

    @staticmethod
    def _empty(window: int) -> dict[str, Any]:
        return {
            "index": 0,
            "start": [],
            "close_at": window,
            "last": None,
            "windows": {},
            "episode": None,
            "started_at": iso_time(time.time()),
        }

    @property
    def _path(self) -> Path:
        assert self._folder is not None
        return self._folder / "drift-state.json"

    def read(self) -> dict[str, Any]:
        if self._folder is None:
            with self._lock:
                return json.loads(json.dumps(self._memory))
        try:
            return json.loads(self._path.read_text())
        except (OSError, ValueError):
            return self._empty(self._window)

    def locked(self) -> Any:
        return _Locked(self)

    def _read_held(self) -> dict[str, Any]:
        """The state, parsed again only when another worker has replaced the file since
        (every flush takes the lock; a window closes far less often)."""
        try:
            stat = self._path.stat()
            file = (stat.st_ino, stat.st_mtime_ns)
        except OSError:
            file = None
        if self._held is None or file != self._held_file:
            self._held, self._held_file = self.read(), file
        return self._held

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._path)
        stat = self._path.stat()
        self._held, self._held_file = state, (stat.st_ino, stat.st_mtime_ns)


class _Locked:
    def __init__(self, owner: _WindowState) -> None:
        self.owner = owner

    def __enter__(self) -> dict[str, Any]:
        owner = self.owner
        owner._lock.acquire()
        if owner._folder is None:
            self.state = owner._memory
            return self.state
        self._fd = os.open(owner._folder / "drift.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.state = owner._read_held()
        self._index = self.state["index"]
        return self.state

    def __exit__(self, *exc: Any) -> None:
        owner = self.owner
        try:
            if owner._folder is not None:
                if exc[0] is not None:
                    owner._held = None  # may be half changed
                elif self.state["index"] != self._index:  # it changes when a window closes
                    owner._write(self.state)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
        finally:
            owner._lock.release()
