"""Readiness speaks for the whole server: it is 200 only when every worker can predict,
and a worker that replaces a dead one takes no connection before its model is loaded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.support import slow_model
from tests.support.server import ServerProcess

SLOW_S = 3.0


def start_slow(start_server, trained_models: Path, tmp_path: Path, ready: bool) -> ServerProcess:
    model = slow_model.write(trained_models, tmp_path, SLOW_S)
    return start_server({"WORKERS": "2", "MODEL_PATH": str(model), "ALLOW_PICKLE": "1"}, ready=ready)


def predictions(srv: ServerProcess, card: dict, count: int) -> list[int]:
    """Statuses of `count` predictions, each on a new connection (spread over workers)."""
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    return [requests.post(srv.url + "/predict", json={"features": row}, timeout=5).status_code for _ in range(count)]


def test_readiness_waits_for_every_worker(start_server, trained_models, tmp_path, card):
    srv = start_slow(start_server, trained_models, tmp_path, ready=False)
    reasons = set()
    deadline = time.monotonic() + 60
    while (resp := requests.get(srv.url + "/health/readiness", timeout=5)).status_code != 200:
        reasons.add(resp.json()["error"]["message"])
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.05)
    assert predictions(srv, card, 20) == [200] * 20
    assert "another worker of this server is still loading the model" in reasons


def _workers(srv: ServerProcess) -> list[int]:
    pid = srv.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_replacement_worker_takes_no_connection_before_its_model_loads(start_server, trained_models, tmp_path, card):
    srv = start_slow(start_server, trained_models, tmp_path, ready=True)
    os.kill(_workers(srv)[0], signal.SIGKILL)
    time.sleep(0.3)  # a connection sent to the dying worker meanwhile is reset, as on any crash
    deadline = time.monotonic() + SLOW_S - 1
    statuses = []
    while time.monotonic() < deadline:
        statuses += predictions(srv, card, 5)
    assert set(statuses) == {200}
    # and once loaded it serves its share again
    time.sleep(1)
    assert len(_workers(srv)) == 2
    assert requests.get(srv.url + "/health/readiness", timeout=5).status_code == 200


def test_ready_means_every_worker_even_those_not_forked_yet(start_server, card):
    # gunicorn forks workers one after another, a few tens of milliseconds apart: the
    # first to load its model must not find the pod ready before the last exists.
    srv = start_server({"WORKERS": "4"}, ready=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(srv.url + "/health/readiness", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, srv.log()
    assert predictions(srv, card, 40) == [200] * 40


@pytest.mark.parametrize("pinned_by", ["first load", "MODEL_SHA256"])
def test_a_model_file_replaced_under_a_running_pod_never_serves_beside_the_first(
    start_server, default_model, tmp_path, card, pinned_by
):
    """The file is replaced (as export_onnx.py does, by a rename), then a worker dies: its
    replacement reads version 2 while its sibling serves version 1, or fails MODEL_SHA256.
    The server stops as a whole (gunicorn's exit 3, which restarts the container) rather
    than answer from two versions or flap between ready and not."""
    import hashlib

    from func.model.card import ModelCard
    from func.model.export import with_card

    v1 = default_model.read_bytes()
    v2 = with_card(v1, ModelCard.from_dict({**card, "version": "2"}))
    served = tmp_path / "model.onnx"
    served.write_bytes(v1)
    env = {"WORKERS": "2", "MODEL_PATH": str(served), "MODEL_VERSION": ""}
    if pinned_by == "MODEL_SHA256":
        env["MODEL_SHA256"] = hashlib.sha256(v1).hexdigest()
    srv = start_server(env)
    replacement = tmp_path / "model.onnx.new"
    replacement.write_bytes(v2)
    replacement.replace(served)
    os.kill(_workers(srv)[0], signal.SIGKILL)

    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    versions = set()
    deadline = time.monotonic() + 60
    while srv.proc.poll() is None and time.monotonic() < deadline:
        try:
            resp = requests.post(srv.url + "/predict", json={"features": row}, timeout=5)
        except requests.ConnectionError:
            continue
        if resp.status_code == 200:
            versions.add(resp.headers["X-Model-Version"])
    assert srv.proc.wait(30) == 3, srv.log()
    assert versions == {"1"}
    assert srv.log().count("cannot serve the model this server serves") == 1
