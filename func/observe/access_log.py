"""One JSON line per request on stdout, beside the lifecycle lines of func/observe/logs.py.

Lines are built from a template and written in batches: through `logging` a line costs
about 10 us of a 110 us request, one os.write per line about 7 us in a busy worker, a
batch a fraction of that. A line reaches stdout within FLUSH_S, or at once when the
batch is full; what is buffered is written when the process exits normally, and lost
only if it is killed (SIGKILL) - at most FLUSH_S of lines.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

import orjson

from ..config import Settings
from .logs import labels

FLUSH_S = 0.05
# Below the pipe buffer (64 KB), so one batch reaches the log in one piece.
BATCH_BYTES = 32 * 1024


class AccessLog:
    def __init__(self, settings: Settings) -> None:
        extra = b"".join(b"," + orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in labels(settings).items())
        self._tail = extra.decode() + "}\n"
        self._second = -1
        self._stamp = ""
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._version: tuple[str, str] = ("", '""')  # the model version and its JSON, encoded once

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            # Formatting the date once a second, not once a request.
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(
        self,
        method: str,
        route: str,
        status: int,
        rows: int,
        seconds: float,
        model_version: str,
        trace_id: str | None,
    ) -> None:
        """Queue one line. Method and route are HTTP tokens and route templates (no
        quotes or backslashes: gunicorn refuses such methods); the model version comes
        from configuration and is encoded."""
        trace = f',"trace_id":"{trace_id}"' if trace_id else ""
        version = self._version
        if version[0] != model_version:
            version = self._version = (model_version, orjson.dumps(model_version).decode())
        line = (
            f'{{"time":"{self._time(time.time())}","level":"info","logger":"warmstart.access",'
            f'"message":"{method} {route} {status}","method":"{method}","route":"{route}",'
            f'"status":{status},"rows":{rows},"duration_s":{seconds:.6f},'
            f'"model_version":{version[1]}{trace}{self._tail}'
        )
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= BATCH_BYTES
            if self._flusher is None:
                self._start_flusher()
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        data = "".join(lines).encode()
        while data:
            data = data[os.write(1, data) :]

    def _start_flusher(self) -> None:
        # Started with the first line, in the serving process (a thread would not survive
        # gunicorn's fork).
        self._flusher = threading.Thread(target=self._flush_every, name="access-log", daemon=True)
        self._flusher.start()
        atexit.register(self.flush)

    def _flush_every(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()
