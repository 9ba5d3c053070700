"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota.

os.cpu_count() is the node's count. In a pod with `limits.cpu: 2` on a 64-core node it
says 64, and a thread pool of 64 spinning threads against a 2-CPU quota spends the pod's
time being throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The smaller of the CPUs this process may run on and its cgroup's quota, rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None
    when there is none or it cannot be read."""
    v2 = _read(cgroup_root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period)
    v1 = _read(cgroup_root / "cpu" / "cpu.cfs_quota_us") or _read(cgroup_root / "cpu.cfs_quota_us")
    if v1 is not None:
        period = _read(cgroup_root / "cpu" / "cpu.cfs_period_us") or _read(cgroup_root / "cpu.cfs_period_us")
        return _ratio(v1, period or "")
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for no quota


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
