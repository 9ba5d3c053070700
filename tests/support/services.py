"""Real services the model-source and retraining tests talk to, on loopback ports:
a static file server (plain http: the https:// path is the same fsspec code with TLS on
top), an S3-compatible server (moto's server mode), an MLflow tracking server with its
model registry (in its own virtualenv, since mlflow's dependencies must not meet ours),
and a CloudEvents receiver."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.http import from_http

from tests.support.server import free_port

MLFLOW_VERSION = "3.17.2"
# Reused between test sessions (creating it takes minutes and ~1 GB): outside the repository.
TEST_CACHE = Path(os.environ.get("WARMSTART_TEST_CACHE", Path.home() / ".cache" / "warmstart-test"))
MLFLOW_VENV = TEST_CACHE / "mlflow-venv"
PIP_TIMEOUT_S = 900
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class FileServer:
    """A folder served over HTTP; `gets` counts the GET requests per path."""

    root: Path
    url: str
    gets: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    served = FileServer(root, "")

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            served.gets[self.path] = served.gets.get(self.path, 0) + 1
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:  # refused, or accepted but not answering yet
            time.sleep(0.2)
    raise TimeoutError(f"{url}: no answer after {timeout}s:\n{log.read_text()[-3000:]}")


def _stop_group(proc: subprocess.Popen) -> None:
    """End the server and every child it started (mlflow starts job runners)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto_server on a free port; tests create their own buckets."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **S3_ENV},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc, log, 60)
        yield url
    finally:
        _stop_group(proc)


def mlflow_python() -> Path:
    """The python of a virtualenv holding mlflow, made once and reused; skip if it cannot be."""
    python = MLFLOW_VENV / "bin" / "python"
    marker = MLFLOW_VENV / f".installed-mlflow-{MLFLOW_VERSION}"
    if marker.exists():
        return python
    building = MLFLOW_VENV.with_name(MLFLOW_VENV.name + ".part")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True)
        result = subprocess.run(
            [
                str(building / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"mlflow=={MLFLOW_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"mlflow=={MLFLOW_VERSION} could not be installed into {building}: {exc}")
    if result.returncode != 0:
        pytest.skip(f"mlflow=={MLFLOW_VERSION} could not be installed into {building}: {result.stderr[-500:]}")
    (building / marker.name).touch()
    shutil.rmtree(MLFLOW_VENV, ignore_errors=True)
    # `python -m mlflow` does not depend on the folder's name, so the finished venv moves in whole
    building.rename(MLFLOW_VENV)
    return python


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One MLflow tracking server (SQLite store, artifacts proxied) for the session."""
    python = mlflow_python()
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = home / "mlflow.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            mlflow_server_command(python, port, home),
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, log, 120)
        yield url
    finally:
        _stop_group(proc)


@dataclass
class Receiver:
    """A CloudEvents sink: every event POSTed to `url`, parsed with the SDK."""

    url: str
    events: list[Any] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Any]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    sink = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            sink.events.append(from_http(dict(self.headers), body))
            structured = self.headers.get("Content-Type", "").startswith("application/cloudevents+json")
            sink.modes.append("structured" if structured else "binary")
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield sink
    httpd.shutdown()
    httpd.server_close()


def register_in_mlflow(url: str, name: str, model: Path, alias: str | None = None) -> str:
    """Register `model` as a new version of `name` the way any MLflow client does over
    REST (a run holds the file; the version points at it); return the version."""
    api = url + "/api/2.0/mlflow"
    run = requests.post(api + "/runs/create", json={"experiment_id": "0"}, timeout=30).json()["run"]["info"]
    folder = f"{run['artifact_uri']}/model"
    path = folder.removeprefix("mlflow-artifacts:/")
    put = requests.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}/{model.name}", data=model.read_bytes())
    put.raise_for_status()
    requests.post(api + "/registered-models/create", json={"name": name}, timeout=30)
    created = requests.post(
        api + "/model-versions/create", json={"name": name, "source": folder, "run_id": run["run_id"]}, timeout=30
    )
    created.raise_for_status()
    version = created.json()["model_version"]["version"]
    if alias:
        answer = requests.post(
            api + "/registered-models/alias", json={"name": name, "alias": alias, "version": version}, timeout=30
        )
        answer.raise_for_status()
    return version


def mlflow_server_command(python: Path, port: int, home: Path) -> list[str]:
    """`mlflow server` on a loopback port, its store and artifacts under `home`."""
    return [
        str(python),
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts"),
    ]
