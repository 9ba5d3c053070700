"""The recent-prediction index: the answer a pod gave to each of its recent rows, so that
feedback can be scored against it when the true label arrives.

Each worker writes its own table, a file of the pod's shared folder (memory when a
process serves alone), and feedback arriving at any worker looks its ids up in every
worker's table, a dead worker's included: a pod matches labels for any row its workers
answered. A label for a row another pod answered (another replica, another revision) is
not in these tables: it is scored against the answer the feedback reports, where it
reports one (and then kept here, `remember`), or else counted as unmatched; either way
it is stored in the log, where the dataset join (func/dataset.py) finds its prediction.

Memory is bounded: a table has FEEDBACK_RECENT slots of 32 bytes (key, age, answer,
label), four ways to a set; a new row takes the oldest slot of its set, so a row is
remembered until about FEEDBACK_RECENT newer rows have passed through its worker. A row
is keyed by the request id's 64-bit string hash and its row number, so a lookup reads
four slots, whatever the table's size. Python's string hash is seeded per interpreter,
and every worker of a pod is a fork of its one master: they share the seed, so the keys
agree across the pod's tables (which live no longer than the master's shared folder).

The first label of a row is scored; it is kept in the slot, so a label delivered again
(a broker's retry) is matched without being scored twice.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import numpy as np

from .tallies import allocate

WAYS = 4  # RecentPredictions.add reads a set's four ways unrolled
MIN_SETS = 16
_WORDS = 4  # key, age, answer, label: a slot is four 8-byte words
_M = (1 << 64) - 1
_ROW_STEP = 0x9E3779B97F4A7C15  # golden-ratio step: rows of one request land apart
_MIX = 0xBF58476D1CE4E5B9  # splitmix64's multiplier: the key's high bits pick the set
_NAN = float("nan")  # no label yet


def request_key(request_id: str) -> int:
    # hash() costs 0.05 us (cached on the string), a blake2b digest 1 us
    return hash(request_id) & _M


def _row_keys(request_ids: list[str], rows: list[int]) -> np.ndarray:
    """The keys of rows named by request id and row number, as `add` makes them."""
    return np.array([(request_key(r) + row * _ROW_STEP) & _M | 1 for r, row in zip(request_ids, rows)], dtype=np.uint64)


class _Table:
    """One worker's slots: a (sets * WAYS, 4) view as unsigned keys/ages and float answers/labels."""

    def __init__(self, buffer: object, slots: int) -> None:
        self.words = np.frombuffer(buffer, dtype=np.uint64, count=slots * _WORDS).reshape(slots, _WORDS)
        self.values = self.words.view(np.float64)

    def find(self, keys: np.ndarray, set_of: np.ndarray) -> np.ndarray:
        """The slot holding each key, -1 where none does."""
        candidates = set_of[:, None] * WAYS + np.arange(WAYS)
        hit = self.words[candidates, 0] == keys[:, None]
        return np.where(hit.any(axis=1), candidates[np.arange(len(keys)), hit.argmax(axis=1)], -1)


class RecentPredictions:
    def __init__(self, shared_dir: str | None, capacity: int) -> None:
        sets = 1 << (max(capacity // WAYS, MIN_SETS) - 1).bit_length()
        self.slots = sets * WAYS
        self._shift = 64 - sets.bit_length() + 1
        self._folder = Path(shared_dir) if shared_dir else None
        self.lock = threading.Lock()
        self._age = 0
        self._tables: dict[str, _Table] = {}
        size = self.slots * _WORDS * 8
        if self._folder is None:
            self._buffer: object = bytearray(size)
        else:
            path = self._folder / f"recent-{os.getpid()}.bin"
            # Storage allocated now, as for the counts (tallies.allocate): a sparse file
            # would get it at each page's first write through the map, a SIGBUS on a full
            # folder and, on a disk-backed one, a block allocation on the request path.
            allocate(path, size)
            with path.open("r+b") as fh:
                self._buffer = mmap.mmap(fh.fileno(), size)
            self._tables[path.name] = _Table(self._buffer, self.slots)
        self._own = _Table(self._buffer, self.slots)
        # Single slots through memoryviews: the one-row path costs a few dict-free steps.
        self._u = memoryview(self._buffer).cast("B").cast("Q")
        self._d = memoryview(self._buffer).cast("B").cast("d")

    def add(self, request_id: str, answers: list[float] | np.ndarray) -> None:
        """Remember a request's answers (a class index or a value per row)."""
        if len(answers) == 1:
            # request_key and _sets' formula written out for one key: no calls, no arrays
            key = (hash(request_id) & _M) | 1
            first = (((key * _MIX) & _M) >> self._shift) * WAYS * _WORDS
            u, d = self._u, self._d
            with self.lock:
                self._age += 1
                # the four ways' ages, unrolled (a comprehension costs a function call)
                ages = (u[first + 1], u[first + 5], u[first + 9], u[first + 13])
                at = first + ages.index(min(ages)) * _WORDS
                u[at] = 0  # a reader never sees the new key beside the old answer
                d[at + 2] = answers[0]
                d[at + 3] = _NAN
                u[at + 1] = self._age
                u[at] = key
            return
        base = request_key(request_id)
        keys = self._keys(base, np.arange(len(answers), dtype=np.uint64))
        set_of = self._sets(keys)
        words, values = self._own.words, self._own.values
        with self.lock:
            candidates = set_of[:, None] * WAYS + np.arange(WAYS)
            slot = candidates[np.arange(len(keys)), words[candidates, 1].argmin(axis=1)]
            words[slot, 0] = 0
            values[slot, 2] = np.asarray(answers, dtype=np.float64)
            values[slot, 3] = np.nan
            words[slot, 1] = np.arange(self._age + 1, self._age + 1 + len(keys), dtype=np.uint64)
            words[slot, 0] = keys
            self._age += len(keys)

    @staticmethod
    def _keys(base: int, rows: np.ndarray) -> np.ndarray:
        return (np.uint64(base) + rows * np.uint64(_ROW_STEP)) | np.uint64(1)

    def _sets(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * np.uint64(_MIX)) >> np.uint64(self._shift)).astype(np.int64)

    def match(
        self, request_ids: list[str], rows: list[int], labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(matched, answer, first) per label: whether a worker of this pod answered the
        row, its answer, and whether this is the row's first label (which is then kept)."""
        keys = _row_keys(request_ids, rows)
        set_of = self._sets(keys)
        matched = np.zeros(len(keys), dtype=bool)
        answers = np.full(len(keys), np.nan)
        first = np.zeros(len(keys), dtype=bool)
        for table in self._all_tables():
            todo = np.flatnonzero(~matched)
            if not len(todo):
                break
            slot = table.find(keys[todo], set_of[todo])
            found = slot >= 0
            hits, slot = todo[found], slot[found]
            matched[hits] = True
            answers[hits] = table.values[slot, 2]
            # The first of several labels for one row in this very request counts once.
            unique_slot, first_index = np.unique(slot, return_index=True) if len(slot) > 1 else (slot, [0])
            fresh = np.isnan(table.values[unique_slot, 3])
            first[hits[np.asarray(first_index)[fresh]]] = True
            table.values[slot, 3] = labels[hits]
        return matched, answers, first

    def remember(self, request_ids: list[str], rows: list[int], answers: np.ndarray, labels: np.ndarray) -> None:
        """Keep rows this pod did not answer, with the answer and the label feedback
        reported for them: the same label delivered again (a broker's retry) is then
        matched here and not scored twice."""
        keys = _row_keys(request_ids, rows)
        set_of = self._sets(keys)
        words, values = self._own.words, self._own.values
        with self.lock:
            for i, (key, at) in enumerate(zip(keys, set_of)):  # one at a time: two may share a set
                candidates = at * WAYS + np.arange(WAYS)
                slot = candidates[words[candidates, 1].argmin()]
                words[slot, 0] = 0  # a reader never sees the new key beside the old answer
                values[slot, 2] = answers[i]
                values[slot, 3] = labels[i]
                self._age += 1
                words[slot, 1] = self._age
                words[slot, 0] = key

    def _all_tables(self) -> list[_Table]:
        if self._folder is None:
            return [self._own]
        for path in self._folder.glob("recent-*.bin"):
            if path.name not in self._tables:
                with path.open("r+b") as fh:
                    self._tables[path.name] = _Table(mmap.mmap(fh.fileno(), self.slots * _WORDS * 8), self.slots)
        return list(self._tables.values())
