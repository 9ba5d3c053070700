"""Adaptive batching: concurrent requests in one process coalesced into one model call,
as MLServer and Triton do, bounded by a row count and an added delay.

Off by default (ADAPTIVE_BATCH_ROWS=0): with one-row requests the model call is ~5 us of the
~150 us a request costs, so waiting for company only adds latency (loadtests/bench.py
measured it; see README, Performance). It is for models whose per-call cost dominates.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from .runtime import Prediction


class _Pending:
    __slots__ = ("rows", "done", "result", "error")

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.done = threading.Event()
        self.result: Prediction | None = None
        self.error: BaseException | None = None


class Batcher:
    """Queue rows from many threads; one thread predicts them together."""

    def __init__(self, predict: Callable[[np.ndarray], Prediction], max_rows: int, max_delay_s: float) -> None:
        self._predict = predict
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Condition()
        threading.Thread(target=self._run, name="batcher", daemon=True).start()

    def predict(self, rows: np.ndarray) -> Prediction:
        if len(rows) >= self.max_rows:
            return self._predict(rows)
        pending = _Pending(rows)
        with self._ready:
            self._queue.append(pending)
            self._ready.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _run(self) -> None:
        while True:
            batch = self._collect()
            try:
                joined = self._predict(np.concatenate([p.rows for p in batch]))
            except BaseException as exc:  # every waiting request gets the failure
                for p in batch:
                    p.error = exc
                    p.done.set()
                continue
            start = 0
            for p in batch:
                end = start + len(p.rows)
                probabilities = joined.probabilities[start:end] if joined.probabilities is not None else None
                p.result = Prediction(joined.labels[start:end], probabilities)
                p.done.set()
                start = end

    def _collect(self) -> list[_Pending]:
        """The first waiting request, plus whatever arrives within max_delay_s, up to max_rows."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            batch = [self._queue.popleft()]
            rows = len(batch[0].rows)
            deadline = time.monotonic() + self.max_delay_s
            while rows < self.max_rows:
                if not self._queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._ready.wait(remaining):
                        break
                    continue
                if rows + len(self._queue[0].rows) > self.max_rows:
                    break
                batch.append(self._queue.popleft())
                rows += len(batch[-1].rows)
        return batch
