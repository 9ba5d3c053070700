"""Facts about this process the kernel keeps."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_started(pid: int | str = "self") -> float:
    """When a process started, in seconds since the epoch, to the kernel's 10 ms tick
    (Linux /proc; now, elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # the fields after the command name (which may hold spaces) start at 3; starttime is 22
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()
