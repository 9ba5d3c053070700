"""Start real warmstart server processes on free loopback ports for tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "model.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m func` (or another command) in its own process, stdout captured to a file."""

    def __init__(self, env: dict[str, str] | None = None, cmd: list[str] | None = None, log_dir: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "MODEL_PATH": str(DEFAULT_MODEL),
            "WORKERS": "1",
            "THREADS": "4",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        # The server's shared folder goes under one of this process's own, removed once
        # it has exited: a server killed with SIGKILL cannot remove its own, and a run of
        # the suite left a gigabyte of them in /tmp. Not where the test places it itself.
        self.shared_base: str | None = None
        if "SHARED_DIR" not in self.env and "TMPDIR" not in (env or {}):
            self.shared_base = self.env["SHARED_DIR"] = tempfile.mkdtemp(prefix="warmstart-test-")
            weakref.finalize(self, shutil.rmtree, self.shared_base, True)  # a server never stopped here
        self.cmd = cmd or [sys.executable, "-m", "func"]
        self.log_path = (log_dir or Path("/tmp")) / f"warmstart-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cwd = ROOT

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                requests.get(self.url + "/health/liveness", timeout=1)
                return
            except (requests.ConnectionError, requests.Timeout):  # a busy machine starts slowly
                time.sleep(0.05)
        raise TimeoutError(f"server not listening after {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait for readiness 200, which `python -m func` answers once every worker can predict."""
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requests.get(self.url + "/health/readiness", timeout=2).status_code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.close()
        self._remove_shared()
        return code

    def kill(self) -> None:
        """SIGKILL the server and every worker it forked, as a node failure would."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()
        self._remove_shared()

    def _remove_shared(self) -> None:
        if self.shared_base:
            shutil.rmtree(self.shared_base, ignore_errors=True)


def wait_for(check, timeout: float = 10.0):
    """Call `check` until it returns something true or `timeout` passes; its last result.
    For what a server does off the request path (batched counts, sends)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def readiness(srv) -> requests.Response:
    return requests.get(srv.url + "/health/readiness", timeout=5)


def wait_for_load_failure(srv, timeout: float = 30) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = readiness(srv)
        if "still loading" not in resp.text:
            return resp
        time.sleep(0.05)
    raise TimeoutError(srv.log())


def error_lines(srv) -> list[dict]:
    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    return [entry for entry in lines if entry["level"] == "error"]


def assert_not_ready_with_one_log_line(srv, *phrases: str) -> None:
    resp = wait_for_load_failure(srv)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    # callers learn that it failed; the path and digests stay in the server's log
    assert resp.json()["error"]["message"] == "the model failed to load; the server log says why"
    # probes keep coming; the process stays up and does not log once per probe
    for _ in range(5):
        assert readiness(srv).status_code == 503
    assert requests.get(srv.url + "/health/liveness").status_code == 200
    assert srv.proc.poll() is None
    errors = error_lines(srv)
    assert len(errors) == 1, errors
    assert "Traceback" not in srv.log()
    for phrase in phrases:
        assert phrase in errors[0]["message"]
