from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.server import DEFAULT_MODEL, ROOT, ServerProcess

# fixtures of real outside services, here so session-scoped ones start once per session
from tests.support.services import file_server, mlflow_url, receiver, s3_endpoint  # noqa: F401


def pytest_report_header() -> list[str]:
    """The free disk the run starts with: a full one fails tests far from the cause (a
    CI run ran out in tmp_path's mkdir). Measured on a fresh clone: the tests' own peak is
    2.2 GB beyond what `make test` installs, podman's images (1.75 GB) while the image
    tests run; the temporary folder stays under 0.5 GB."""
    places = [tempfile.gettempdir(), "/var/lib/containers"]
    free = [f"{p} {shutil.disk_usage(p).free / 1e9:.1f} GB" for p in places if Path(p).exists()]
    return ["free disk: " + ", ".join(free)]


@pytest.fixture(scope="session")
def default_model() -> Path:
    if not DEFAULT_MODEL.exists():
        pytest.fail(f"{DEFAULT_MODEL} is missing: run `make model` (make test trains it)")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def card(default_model: Path) -> dict:
    import onnxruntime as ort

    meta = ort.InferenceSession(str(default_model)).get_modelmeta().custom_metadata_map
    return json.loads(meta["warmstart.card"])


@pytest.fixture(scope="session")
def dataset() -> tuple[np.ndarray, list[str]]:
    """The breast-cancer rows the default model was trained on, and their feature names."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, [str(n) for n in data.feature_names]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `python -m func` with extra environment; every server is stopped afterwards."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, ready: bool = True, cmd: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(env, cmd=cmd, log_dir=tmp_path).start()
        started.append(server)
        server.wait_ready() if ready else server.wait_listening()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[ServerProcess]:
    """One server on the default model, shared by a module's read-only tests."""
    proc = ServerProcess({"WORKERS": "2"}, log_dir=tmp_path_factory.mktemp("server")).start()
    proc.wait_ready()
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the default model in all three forms: model.onnx, model.joblib,
    model.skops, and model.card.json beside the latter two."""
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--out", str(out / "model.onnx"), "--joblib", "--skops"],
        check=True,
        capture_output=True,
    )
    return out
