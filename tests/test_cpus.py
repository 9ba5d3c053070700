"""INFERENCE_THREADS: by default the CPUs the pod may use (its affinity and its cgroup's
CPU quota), not the node's core count."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from func.config import Settings
from func.cpus import available_cpus, cgroup_cpu_quota
from tests.support.server import ServerProcess

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        pytest.param({"cpu.max": "150000 100000"}, 1.5, id="v2 limit"),
        pytest.param({"cpu.max": "max 100000"}, None, id="v2 no limit"),
        pytest.param({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0, id="v1 limit"),
        pytest.param({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None, id="v1 no limit"),
        pytest.param({}, None, id="no cgroup files"),
    ],
)
def test_the_cgroup_quota_is_read_from_v1_or_v2_files(tmp_path, files, quota):
    assert cgroup_cpu_quota(cgroup(tmp_path, files)) == quota


def test_a_quota_below_the_affinity_bounds_the_count_rounded_up(tmp_path):
    assert available_cpus(cgroup(tmp_path, {"cpu.max": "50000 100000"})) == 1
    assert available_cpus(cgroup(tmp_path, {"cpu.max": f"{AFFINITY * 100000 - 50000} 100000"})) == AFFINITY
    assert available_cpus(cgroup(tmp_path, {"cpu.max": f"{AFFINITY * 400000} 100000"})) == AFFINITY
    assert available_cpus(cgroup(tmp_path, {"cpu.max": "max 100000"})) == AFFINITY


def test_inference_threads_is_a_setting():
    assert Settings.from_env({}).inference_threads == available_cpus()
    assert Settings().inference_threads == available_cpus()
    assert Settings.from_env({"INFERENCE_THREADS": "3"}).inference_threads == 3


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


def test_the_large_input_session_runs_on_inference_threads(tmp_path):
    """onnxruntime starts INFERENCE_THREADS - 1 pool threads for the bulk session. The
    server gets no HTTP request here, which would add gunicorn threads of its own."""
    counts = {}
    for threads in (1, 5):
        server = ServerProcess({"INFERENCE_THREADS": str(threads), "WORKERS": "1"}, log_dir=tmp_path).start()
        try:
            deadline = time.monotonic() + 30
            while "ready in" not in server.log():
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            time.sleep(0.3)  # the model-loading thread has ended
            counts[threads] = _threads(_worker_pid(server.proc.pid))
            assert f"inputs of 512 rows or more on {threads} thread(s)" in server.log()
        finally:
            server.kill()
    assert counts[5] - counts[1] == 4
