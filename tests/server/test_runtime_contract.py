"""Knative's runtime contract: listen on PORT, log to stdout, label with K_* variables,
and on SIGTERM drain and exit 0 within the grace period."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import requests

from tests.support.server import DEFAULT_MODEL, ROOT, free_port


def test_logs_are_json_lines_on_stdout_labelled_with_the_revision(tmp_path, dataset):
    x, _ = dataset
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL_PATH": str(DEFAULT_MODEL),
        "WORKERS": "1",
        "K_SERVICE": "cancer",
        "K_REVISION": "cancer-00003",
        "K_CONFIGURATION": "cancer",
        "GRACEFUL_TIMEOUT": "5",
    }
    out, err = (tmp_path / "stdout").open("wb"), (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "func"], cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/health/readiness", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # a busy machine starts slowly
                pass
            assert time.monotonic() < deadline, (tmp_path / "stdout").read_text()
            time.sleep(0.05)
        resp = requests.post(url + "/predict", json={"features": x[0].tolist()})
        assert resp.headers["X-Revision"] == "cancer-00003"
        # 1e300 overflows NumPy's float32 cast: refused by its value, with no warning logged
        # for the client's bad input (nor a bare line on stderr)
        for _ in range(2):  # one request per worker, at least
            resp = requests.post(url + "/predict", json={"features": [1e300] * len(x[0])})
            assert resp.status_code in (400, 422), resp.text
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()

    lines = (tmp_path / "stdout").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert (tmp_path / "stderr").read_text() == ""
    ours = [e for e in entries if e["logger"].startswith("warmstart")]
    assert ours and all(
        e["service"] == "cancer" and e["revision"] == "cancer-00003" and e["configuration"] == "cancer" for e in ours
    )
    messages = [e["message"] for e in entries]
    assert not [e for e in entries if e["logger"] == "py.warnings"], messages
    assert any(f"127.0.0.1:{port}" in m for m in messages), "listens on PORT"
    # the default model answers from its mapped forest where `make` wrote one beside it
    ready = re.compile(r"model breast-cancer-rf version 1 \(onnx, answered by (forest|onnxruntime)\) ready in ")
    assert any(ready.match(m) for m in messages), messages
    assert any(m.startswith("shutdown started") for m in messages)
    assert {"time", "level", "logger", "message"} <= set(entries[0])


def _listening_sockets(port: int) -> int:
    """TCP sockets in LISTEN state on `port`, from /proc/net/tcp (state 0A)."""
    count = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.split(":")[1], 16) == port and state == "0A":
            count += 1
    return count


def test_every_worker_listens_on_its_own_socket(start_server):
    """SO_REUSEPORT per worker: the kernel spreads connections, instead of the first
    worker to wake accepting them all from one shared socket."""
    srv = start_server({"WORKERS": "3"})
    assert _listening_sockets(srv.port) == 3


def test_the_startup_line_names_the_address(start_server):
    srv = start_server()
    assert f"Listening at: http://127.0.0.1:{srv.port} (" in srv.log()


def test_help_prints_usage_and_serves_nothing():
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MODEL_PATH": str(DEFAULT_MODEL)}
    done = subprocess.run(
        [sys.executable, "-m", "func", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: python -m func")
    assert "MODEL_PATH=models/model.onnx PORT=8080 python -m func\n" in done.stdout
    assert "Booting worker" not in done.stdout + done.stderr


def test_a_port_in_use_is_one_clear_error_not_a_crash_loop(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MODEL_PATH": str(DEFAULT_MODEL)}
        done = subprocess.run(
            [sys.executable, "-m", "func"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stdout
    assert "Booting worker" not in done.stdout


def test_the_master_forks_its_workers_back_to_back(monkeypatch):
    """gunicorn sleeps up to 0.1 s after each fork; the pod is ready only when every
    worker has loaded, so those sleeps were on the cold start's path."""
    import gunicorn.arbiter

    from func.server.application import BackToBackArbiter

    slept: list[float] = []
    monkeypatch.setattr(gunicorn.arbiter.time, "sleep", slept.append)
    spawned: list[int] = []
    master = SimpleNamespace(num_workers=4, WORKERS={101: "a worker still running"})
    master.spawn_worker = lambda: spawned.append(len(spawned))
    BackToBackArbiter.spawn_workers(master)
    assert (spawned, slept) == ([0, 1, 2], [])
