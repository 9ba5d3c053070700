"""Logs as JSON lines on stdout, labelled with the Knative service and revision."""

from __future__ import annotations

import json
import logging
import sys
import time

from ..config import Settings


def iso_time(seconds: float) -> str:
    """A UTC time as every log line and event of ours writes it: ISO 8601, to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, labels: dict[str, str]) -> None:
        super().__init__()
        self.labels = labels

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.labels,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def labels(settings: Settings) -> dict[str, str]:
    found = {"service": settings.k_service, "revision": settings.k_revision, "configuration": settings.k_configuration}
    return {k: v for k, v in found.items() if v}


def configure(settings: Settings, level: str = "info") -> logging.Handler:
    """Send every logger's records of `level` and above to stdout as JSON lines; return
    the handler. Python's warnings (NumPy's, a library's deprecations) go the same way, as
    records of the `py.warnings` logger: printed, they were bare lines on stderr among
    the JSON."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(labels(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return handler
