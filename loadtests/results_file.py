"""Where benchmarks write their numbers: JSON with the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "load generator, servers and other processes share the same cores",
    }


def write(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` with the machine's description to `path` as JSON, and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"wrote {path}")
