"""The autoscaler model behind scripts/plan_capacity.py, on cases with a known answer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.support.server import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from autoscaler_sim import PodProfile, Setting, pattern, simulate  # noqa: E402

POD = PodProfile(concurrency=(1, 8, 32), rps=(2000.0, 6000.0, 6500.0), p99_s=(0.001, 0.005, 0.03), cold_start_s=2.5)


def test_steady_load_below_one_pods_capacity_needs_one_pod():
    traffic = pattern("steady", 900, 500)
    outcome = simulate(traffic, POD, Setting(min_scale=1, target=6, container_concurrency=8))
    assert outcome.max_pods == 1
    assert outcome.cold_start_waits == 0
    assert outcome.p99_s <= 0.005


def test_load_above_one_pod_scales_out_to_enough_pods():
    traffic = pattern("steady", 900, 20_000)
    outcome = simulate(traffic, POD, Setting(min_scale=1, target=6, container_concurrency=8))
    steady_pods = outcome.pods[-60:]
    assert min(steady_pods) * POD.capacity_rps >= 20_000
    assert max(steady_pods) <= 8


def test_spike_from_zero_shows_the_cold_start_in_p99_and_min_scale_removes_it():
    traffic = np.zeros(600)
    traffic[300:330] = 1000
    cold = simulate(traffic, POD, Setting(min_scale=0, target=6))
    warm = simulate(traffic, POD, Setting(min_scale=1, target=6))
    assert cold.p99_s >= POD.cold_start_s * 0.5
    assert cold.cold_start_waits > 0
    assert warm.cold_start_waits == 0
    assert warm.p99_s < 0.1
    assert warm.pod_hours > cold.pod_hours, "a warm pod costs pod-hours while idle"


def test_scale_to_zero_after_the_stable_window():
    traffic = np.zeros(400)
    traffic[:10] = 100
    outcome = simulate(traffic, POD, Setting(min_scale=0, target=6))
    assert outcome.pods[-1] == 0
    assert outcome.pods[60] == 1


@pytest.mark.parametrize("name", ["steady", "diurnal", "bursty", "spike-from-zero"])
def test_patterns_are_non_negative_and_peak_at_the_given_rate(name):
    rps = pattern(name, 3600, 1000)
    assert len(rps) == 3600 and rps.min() >= 0 and rps.max() == pytest.approx(1000, rel=0.01)


def test_plan_capacity_recommends_the_cheapest_setting_meeting_the_goal(tmp_path):
    bench = {
        "single_row": {
            "warmstart": {
                "1": {"rps": 2000, "p99_ms": 1},
                "8": {"rps": 6000, "p99_ms": 5},
                "32": {"rps": 5800, "p99_ms": 30},
            }
        },
        "cold_start": {"warmstart, ONNX": {"median_s": 0.2}},
    }
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    (tmp_path / "traffic.csv").write_text("t,rps\n" + "".join(f"{i},{0 if i < 200 else 800}\n" for i in range(400)))
    result = subprocess.run(
        [
            sys.executable,
            "scripts/plan_capacity.py",
            "--bench",
            str(tmp_path / "bench.json"),
            "--csv",
            str(tmp_path / "traffic.csv"),
            "--p99-ms",
            "50",
            "--targets",
            "6",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert report["recommended"] == {"min_scale": 1, "target": 6.0}
    by_min = {o["min_scale"]: o for o in report["outcomes"]}
    assert by_min[0]["p99_ms"] > 50 and by_min[0]["cold_start_waits"] > 0
    assert (tmp_path / "capacity.png").stat().st_size > 0


def test_plan_capacity_writes_nothing_unless_told_where(tmp_path):
    """The repository's own results are tracked files: a user's plan must not rewrite them."""
    results = ROOT / "loadtests" / "results"
    before = {p.name: p.read_bytes() for p in results.glob("capacity.*")}
    (tmp_path / "traffic.csv").write_text("rps\n" + "100\n" * 120)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/plan_capacity.py"), "--csv", "traffic.csv", "--targets", "6"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "recommended: min-scale" in result.stdout
    assert {p.name: p.read_bytes() for p in results.glob("capacity.*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traffic.csv"]


def test_the_readme_example_prints_what_the_readme_shows():
    """The README's plan for a spike from zero, run as written on the repository's own
    bench.json: every line the README shows (but its `...`) is in the output."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ .venv/bin/python scripts/plan_capacity.py ", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    result = subprocess.run(
        [sys.executable, "scripts/plan_capacity.py", *command.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert [line for line in shown if line.strip() != "..."] == [line for line in printed if line in shown]
