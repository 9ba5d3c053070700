"""The whole loop on one machine (scripts/loop.py --quick): every station a real
process, wired as knative/ wires them, with a real Prometheus. It closes by itself, and
never works against itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.prometheus import needs_prometheus
from tests.support.server import ROOT
from tests.support.services import mlflow_python


def loop(tmp_path, scenario: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    out = tmp_path / scenario
    result = subprocess.run(
        [sys.executable, "scripts/loop.py", "--quick", "--scenario", scenario, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    timeline = json.loads((out / "timeline.json").read_text()) if (out / "timeline.json").exists() else []
    return result, timeline


def steps(timeline: list[dict], name: str) -> list[dict]:
    return [s for s in timeline if s["step"] == name]


@needs_prometheus
def test_a_degraded_model_is_retrained_once_rolled_out_and_becomes_the_champion(tmp_path):
    result, timeline = loop(tmp_path, "retrained")
    assert result.returncode == 0, result.stdout + result.stderr
    (published,) = steps(timeline, "retrained")  # exactly one v2
    assert published["detail"].startswith("v2 published")
    assert steps(timeline, "promoted") and not steps(timeline, "rolled back")
    (champion,) = steps(timeline, "champion moved")
    assert champion["detail"].startswith("v2 ")
    (quiet,) = steps(timeline, "drift on the champion")
    assert quiet["detail"] != "drift"
    # in that order
    order = [s["step"] for s in timeline]
    assert order.index("drift detected") < order.index("retrained") < order.index("promoted")
    assert (tmp_path / "retrained" / "loop.png").stat().st_size > 10_000


@needs_prometheus
def test_the_loop_closes_on_an_mlflow_registry_and_moves_its_champion_alias(tmp_path):
    mlflow_python()  # the tests' own MLflow venv, installed once (skips if it cannot be)
    result, timeline = loop(tmp_path, "retrained", "--store", "mlflow")
    assert result.returncode == 0, result.stdout + result.stderr
    (published,) = steps(timeline, "retrained")
    assert published["detail"].startswith("v2 published")
    (champion,) = steps(timeline, "champion moved")
    assert champion["detail"] == "v2 (models:/breast-cancer-rf/2)"


@needs_prometheus
def test_a_worse_retrained_model_never_reaches_the_traffic(tmp_path):
    result, timeline = loop(tmp_path, "worse")
    assert result.returncode == 0, result.stdout + result.stderr
    assert steps(timeline, "rejected") or steps(timeline, "rolled back")
    assert not steps(timeline, "promoted") and not steps(timeline, "champion moved")


@pytest.mark.parametrize("scenario", ["retrained", "worse"])
def test_the_loop_documents_itself(scenario):
    result = subprocess.run([sys.executable, "scripts/loop.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and scenario in result.stdout
