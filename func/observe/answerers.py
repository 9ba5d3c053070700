"""The answerers feedback reported to this pod: the (revision, model version) pairs whose
answers it scored without having given them, a numbered slot each.

Feedback may report the answer it labels (func/codecs/feedback.py): a pod that did not
give it (another replica, another revision) scores the label against it, for the
revision that did, and exports those counts beside its own. Every worker must count a
revision in the same slot, so the slots are named in one file of the shared folder, a
line each, appended under a lock; a worker keeps what it has read and reads the file
again only for a pair it does not know. MAX_ANSWERERS bounds the slots (and the series):
past them, a reported answer is not scored here.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

MAX_ANSWERERS = 16
_FILE = "answerers.txt"


class Answerers:
    def __init__(self, shared_dir: str | None) -> None:
        self._path = Path(shared_dir) / _FILE if shared_dir else None
        self._known: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def slot(self, answerer: tuple[str, str]) -> int | None:
        """The slot of a (revision, model version), given one now if it has none; None
        once MAX_ANSWERERS are given."""
        with self._lock:
            if answerer in self._known:
                return self._known.index(answerer)
            if self._path is None:
                if len(self._known) >= MAX_ANSWERERS:
                    return None
                self._known.append(answerer)
                return len(self._known) - 1
            with self._path.open("a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.seek(0)
                self._known = _parse(fh.read())
                if answerer not in self._known:
                    if len(self._known) >= MAX_ANSWERERS:
                        return None
                    fh.write("\t".join(answerer) + "\n")
                    self._known.append(answerer)
                return self._known.index(answerer)

    def named(self) -> list[tuple[str, str]]:
        """Every slot's (revision, model version), in slot order."""
        if self._path is None:
            return list(self._known)
        try:
            return _parse(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []


def _parse(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines()[:MAX_ANSWERERS]:
        revision, _, version = line.partition("\t")
        pairs.append((revision, version))
    return pairs
