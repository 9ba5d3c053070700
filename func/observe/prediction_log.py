"""The prediction log: what was predicted and, later, what really happened, as Parquet
parts under a URI prefix (PREDICTION_LOG) opened through fsspec (a folder, s3://...).

    <prefix>/predictions/date=YYYY-MM-DD/<part>.parquet   a row per predicted row
    <prefix>/feedback/date=YYYY-MM-DD/<part>.parquet      a row per label received

A prediction row holds its id (`id`: `<request id>` for a one-row request, else
`<request id>/<row>`, with `request_id` and `row` beside it), the time, the model's name,
version and digest, the revision, the features (a struct column, one field per feature
name) and the answer (`prediction`, and `probabilities` for a classifier). A feedback row
holds the id as the client sent it, `request_id` and `row` read from it, the label, the
time it arrived, the revision that received it and whether that pod matched it.

Off the request path: a request appends its rows to its worker's buffer (no I/O, no
Arrow), and a thread writes what is buffered every PREDICTION_LOG_FLUSH_S, or sooner when
a quarter of PREDICTION_LOG_BUFFER rows wait. A full buffer drops the request's rows and
counts them; a prediction never waits for the log. A part that cannot be written (a
read-only or full store, a network fault) is counted as lost, with a warning in the log.

Every part is written under a temporary name beginning with `_` (which readers skip) and
renamed when complete, so a reader never sees half a part. Each worker names its parts
with a token of its own and a sequence number, so no two workers write one name and no
row is written twice; on SIGTERM the worker writes what it holds before it exits
(func/server/worker.py), within the grace period. A batch job's parts are named after the
job and its chunk, so a re-delivered job rewrites its own parts instead of adding rows.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..model.card import ModelCard
from ..model.runtime import Prediction

log = logging.getLogger("warmstart.prediction_log")

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
# A part is written when this share of the buffer waits, without waiting for the timer.
EARLY_SHARE = 4
# One warning a minute at most about parts that could not be written.
WARN_EVERY_S = 60.0

Count = Callable[[str, str, int], None]  # (kind, outcome, rows)


def log_filesystem(uri: str) -> tuple[Any, str]:
    """(the fsspec filesystem, the root path in it) of PREDICTION_LOG; ValueError naming
    the variable when the scheme has no backend here."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"PREDICTION_LOG={uri!r}: no fsspec backend for it ({exc})") from None
    return fs, root.rstrip("/")


def split_id(row_id: str) -> tuple[str, int]:
    """(request id, row) of a row id: `<id>/<r>` names row r, a bare `<id>` row 0."""
    head, slash, tail = row_id.rpartition("/")
    if slash and tail.isdigit() and tail.isascii():
        return head, int(tail)
    return row_id, 0


class _Buffer:
    """Feedback waiting for the writer: bounded, never blocking."""

    def __init__(self, kind: str, capacity: int) -> None:
        self.kind, self.capacity = kind, capacity
        self.items: list[tuple[Any, ...]] = []
        self.queued = 0
        self.rows = 0  # queued and being written: what the bound counts
        self.lock = threading.Lock()

    def add(self, item: tuple[Any, ...], rows: int) -> bool:
        with self.lock:
            if self.rows + rows > self.capacity:
                return False
            self.items.append(item)
            self.queued += rows
            self.rows += rows
            return True

    def take(self) -> tuple[Any, int]:
        """(what is queued, its rows), now being written."""
        with self.lock:
            items, rows, self.items, self.queued = self.items, self.queued, [], 0
            return items, rows

    def release(self, rows: int) -> None:
        with self.lock:
            self.rows -= rows


class _Columns(_Buffer):
    """Predicted rows waiting for the writer, copied into arrays as they come: a request
    leaves no Python objects behind it (the garbage collector would walk them on every
    full collection), only its id in a list; the writer takes a copy of the filled rows."""

    def __init__(self, kind: str, capacity: int, n_features: int) -> None:
        super().__init__(kind, capacity)
        self.features = np.empty((capacity, n_features), dtype=np.float32)  # pages touched as filled
        self.times = np.empty(capacity)
        self.labels: np.ndarray | None = None  # of the first answers' type
        self.probabilities: np.ndarray | None = None
        self.counts: list[int] = []

    def add(self, item: tuple[Any, ...], rows: int) -> bool:
        request_id, at, features, prediction = item
        with self.lock:
            n = self.queued
            if self.rows + rows > self.capacity:
                return False
            if self.labels is None:
                self._allocate(prediction)
            end = n + rows
            self.features[n:end] = features
            self.labels[n:end] = prediction.labels  # type: ignore[index]
            if self.probabilities is not None:
                self.probabilities[n:end] = prediction.probabilities
            self.times[n:end] = at
            self.items.append(request_id)
            self.counts.append(rows)
            self.queued = end
            self.rows += rows
            return True

    def _allocate(self, prediction: Prediction) -> None:
        labels = np.asarray(prediction.labels)
        # text labels as objects: a fixed-width string array would cut a longer one
        self.labels = np.empty(self.capacity, dtype=object if labels.dtype.kind in "UOS" else labels.dtype)
        if prediction.probabilities is not None:
            self.probabilities = np.empty((self.capacity, prediction.probabilities.shape[1]), dtype=np.float32)

    def take(self) -> tuple[Any, int]:
        with self.lock:
            n = self.queued
            if not n:
                return None, 0
            assert self.labels is not None
            taken = (
                self.items,
                self.counts,
                self.times[:n].copy(),
                self.features[:n].copy(),
                Prediction(
                    self.labels[:n].copy(), None if self.probabilities is None else self.probabilities[:n].copy()
                ),
            )
            self.items, self.counts, self.queued = [], [], 0
            return taken, n


class PredictionLog:
    """A worker's log writer: `predictions` and `feedback` append, a thread writes parts."""

    def __init__(
        self,
        uri: str,
        card: ModelCard,
        model_sha256: str,
        revision: str | None,
        sample: float,
        capacity: int,
        flush_s: float,
        count: Count,
    ) -> None:
        self.uri = uri
        self.fs, self.root = log_filesystem(uri)
        self.card, self.sample, self.flush_s = card, sample, flush_s
        self._model = (card.name, card.version, model_sha256, revision or "")
        self._count = count
        self._buffers = {
            PREDICTIONS: _Columns(PREDICTIONS, capacity, card.n_features),
            FEEDBACK: _Buffer(FEEDBACK, capacity),
        }
        self._early = max(capacity // EARLY_SHARE, 1)
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._token = ""
        self._sequence = 0
        self._warned_at = -WARN_EVERY_S

    # -- the request path --------------------------------------------------------------

    def predictions(self, request_id: str, rows: np.ndarray, prediction: Prediction) -> None:
        """Buffer a request's predicted rows (a sampled share of requests)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        self._add(PREDICTIONS, (request_id, time.time(), rows, prediction), len(rows))

    def feedback(self, ids: list[str], labels: list[Any], matched: np.ndarray) -> None:
        """Buffer received labels, as sent (the latest of an id wins in the dataset)."""
        self._add(FEEDBACK, (ids, labels, matched, time.time()), len(ids))

    def _add(self, kind: str, item: tuple[Any, ...], rows: int) -> None:
        buffer = self._buffers[kind]
        if not buffer.add(item, rows):
            self._count(kind, "dropped", rows)
            return
        if self._thread is None:
            self._start()
        if buffer.rows >= self._early:
            self._wake.set()

    def _start(self) -> None:
        # Started in the serving process: a thread would not survive gunicorn's fork, and
        # the token must be this process's own.
        with self._start_lock:
            if self._thread is None:
                self._token = secrets.token_hex(8)
                self._thread = threading.Thread(target=self._write_every, name="prediction-log", daemon=True)
                self._thread.start()

    # -- the writer --------------------------------------------------------------------

    def _write_every(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, a part per kind."""
        with self._write_lock:
            for buffer in self._buffers.values():
                taken, rows = buffer.take()
                if rows:
                    self._write(buffer, taken, rows)

    def close(self) -> None:
        """Write everything buffered and stop the thread (the worker's last step)."""
        self._stopping = True
        self._wake.set()
        self.flush()

    def _write(self, buffer: _Buffer, taken: Any, rows: int) -> None:
        try:
            table = self._predictions_table(*taken) if buffer.kind == PREDICTIONS else self._feedback_table(taken)
            self._sequence += 1
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            name = f"{int(time.time() * 1000)}-{self._token}-{self._sequence:06d}"
            self.write_part(f"{buffer.kind}/date={day}", name, table)
        except Exception as exc:  # the log must never take the server down
            self._count(buffer.kind, "failed", rows)
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                log.warning("prediction log: %d %s rows lost, a part could not be written: %s", rows, buffer.kind, exc)
        else:
            self._count(buffer.kind, "written", rows)
        finally:
            buffer.release(rows)

    def batch_chunk(self, job_key: str, first_row: int, rows: np.ndarray, prediction: Prediction) -> None:
        """Log a batch job's chunk, every k-th row of the job (k = 1 / PREDICTION_LOG_SAMPLE),
        as a part named after the job and the chunk: a re-delivered job rewrites it.
        Written by the job's own thread; a part that cannot be written is counted as lost."""
        if self.sample <= 0.0:
            return
        step = max(round(1 / self.sample), 1)
        keep = np.flatnonzero((first_row + np.arange(len(rows))) % step == 0)
        probabilities = prediction.probabilities
        sampled = Prediction(
            np.asarray(prediction.labels)[keep], None if probabilities is None else probabilities[keep]
        )
        numbers, n = first_row + keep, len(keep)
        try:
            # a job's rows are `<job>/<r>`, as its output's prediction_id column names them
            at = np.full(n, time.time())
            table = self.predictions_table([job_key] * n, numbers, np.zeros(n, bool), at, rows[keep], sampled)
            self.write_part(f"{PREDICTIONS}/batch", f"{job_key}-{first_row:012d}", table)
        except Exception as exc:  # a batch job's answers do not depend on its log
            self._count(PREDICTIONS, "failed", n)
            log.warning("prediction log: %d rows of batch job %s lost: %s", n, job_key, exc)
        else:
            self._count(PREDICTIONS, "written", n)

    def write_part(self, where: str, name: str, table: Any) -> str:
        """Write `table` as the part `name` in the folder `where` under the prefix, under
        a temporary name first."""
        import pyarrow.parquet as pq

        folder = f"{self.root}/{where}"
        path, temporary = f"{folder}/{name}.parquet", f"{folder}/_{name}.parquet.tmp"
        self.fs.makedirs(folder, exist_ok=True)
        try:
            with self.fs.open(temporary, "wb") as fh:
                pq.write_table(table, fh)
            self.fs.mv(temporary, path)
        except BaseException:
            try:
                self.fs.rm(temporary)
            except Exception:
                pass  # nothing was written, or the store refuses even that
            raise
        return path

    # -- tables --------------------------------------------------------------------------

    def predictions_table(
        self,
        request_ids: Any,
        row_numbers: Any,
        single: np.ndarray,
        times: np.ndarray,
        rows: np.ndarray,
        prediction: Prediction,
    ) -> Any:
        """The log's table of predicted rows: each row's request id and number, whether it
        is a one-row request's (its id is then the request's, else `<id>/<r>`), `times`
        in seconds."""
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(rows)
        request_ids = pa.array(request_ids, pa.string())
        row_numbers = pa.array(row_numbers, pa.int32())
        text = pc.cast(row_numbers, pa.string())
        ids = pc.if_else(pa.array(single, pa.bool_()), request_ids, pc.binary_join_element_wise(request_ids, text, "/"))
        name, version, sha256, revision = self._model
        columns: dict[str, Any] = {
            "id": ids,
            "request_id": request_ids,
            "row": row_numbers,
            "time": pa.array((np.asarray(times) * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
            "model_name": pa.repeat(pa.scalar(name), n),
            "model_version": pa.repeat(pa.scalar(version), n),
            "model_sha256": pa.repeat(pa.scalar(sha256), n),
            "revision": pa.repeat(pa.scalar(revision), n),
            "features": pa.StructArray.from_arrays(
                [pa.array(column) for column in np.asarray(rows, dtype=np.float32).T],
                names=list(self.card.feature_names),
            ),
            "prediction": pa.array(np.asarray(prediction.labels).reshape(-1)),
        }
        if prediction.probabilities is not None:
            probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
            columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
                pa.array(probabilities.reshape(-1)), probabilities.shape[1]
            )
        return pa.table(columns)

    def _predictions_table(
        self, request_ids: list[str], counts: list[int], times: np.ndarray, rows: np.ndarray, prediction: Prediction
    ) -> Any:
        sizes = np.array(counts)
        repeated = np.repeat(np.array(request_ids, dtype=object), sizes)
        row_numbers = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        single = np.repeat(sizes == 1, sizes)
        return self.predictions_table(repeated, row_numbers, single, times, rows, prediction)

    def _feedback_table(self, items: list[tuple[Any, ...]]) -> Any:
        import pyarrow as pa

        ids = [i for item in items for i in item[0]]
        labels = [label for item in items for label in item[1]]
        request_ids, row_numbers = zip(*map(split_id, ids))
        times = np.concatenate([np.full(len(item[0]), item[3]) for item in items])
        if not self.card.is_classifier:
            label_type = pa.float64()
        elif any(isinstance(c, str) for c in self.card.class_labels):
            label_type = pa.string()
        elif all(isinstance(c, bool) for c in self.card.class_labels):
            label_type = pa.bool_()
        else:
            label_type = pa.int64()
        return pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "request_id": pa.array(request_ids, pa.string()),
                "row": pa.array(row_numbers, pa.int32()),
                "label": pa.array(labels, label_type),
                "time": pa.array((times * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
                "revision": pa.array([self._model[3]] * len(ids), pa.string()),
                "matched": pa.array(np.concatenate([item[2] for item in items]), pa.bool_()),
            }
        )
