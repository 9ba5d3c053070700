"""Which model files load, which are refused, and what readiness says meanwhile."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import requests


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


def test_readiness_is_503_until_loaded_then_200(start_server, tmp_path):
    # A 1 GB sparse file whose digest must be checked first keeps the loader busy for
    # a second or so: long enough to see readiness say "still loading".
    big = tmp_path / "big.onnx"
    with big.open("wb") as fh:
        fh.truncate(1024**3)
    srv = start_server({"MODEL_PATH": str(big), "MODEL_SHA256": "0" * 64}, ready=False)
    first = readiness(srv)
    assert first.status_code == 503
    assert first.json()["error"]["message"] == "the model is still loading"
    assert requests.get(srv.url + "/health/liveness").status_code == 200
    predict = requests.post(srv.url + "/predict", json={"features": [1.0] * 30})
    assert predict.status_code == 503 and predict.headers["Retry-After"] == "1"
    assert_not_ready_with_one_log_line(srv, "sha256")

    good = start_server(ready=False)
    good.wait_ready()
    assert readiness(good).json() == {"status": "ready"}


def test_missing_model_file_is_not_ready_not_a_crash(start_server, tmp_path):
    srv = start_server({"MODEL_PATH": str(tmp_path / "nope.onnx")}, ready=False)
    assert_not_ready_with_one_log_line(srv, "nope.onnx: no such file")


def test_corrupt_onnx_file_is_not_ready(start_server, tmp_path, default_model):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(default_model.read_bytes()[: default_model.stat().st_size // 2])
    srv = start_server({"MODEL_PATH": str(corrupt)}, ready=False)
    assert_not_ready_with_one_log_line(srv, "not a valid ONNX model")


def test_digest_mismatch_is_refused_and_match_is_served(start_server, default_model):
    digest = hashlib.sha256(default_model.read_bytes()).hexdigest()
    wrong = ("f" if digest[0] != "f" else "e") + digest[1:]
    srv = start_server({"MODEL_SHA256": wrong}, ready=False)
    assert_not_ready_with_one_log_line(srv, f"sha256 is {digest}", f"MODEL_SHA256 requires {wrong}")
    start_server({"MODEL_SHA256": digest.upper()})  # ready, or the fixture raises


def test_joblib_is_refused_without_allow_pickle(start_server, trained_models):
    srv = start_server({"MODEL_PATH": str(trained_models / "model.joblib")}, ready=False)
    assert_not_ready_with_one_log_line(srv, "ALLOW_PICKLE=1")


SKOPS_TREE = "sklearn.tree._tree.Tree"


@pytest.mark.parametrize(
    "form, env", [("model.joblib", {"ALLOW_PICKLE": "1"}), ("model.skops", {"SKOPS_TRUSTED": SKOPS_TREE})]
)
def test_joblib_and_skops_models_predict_like_onnx(start_server, trained_models, dataset, form, env):
    x, names = dataset
    onnx = start_server({"MODEL_PATH": str(trained_models / "model.onnx")})
    other = start_server({"MODEL_PATH": str(trained_models / form), **env})
    body = {"instances": x[:40].tolist()}
    expected = requests.post(onnx.url + "/predict", json=body).json()
    got = requests.post(other.url + "/predict", json=body).json()
    assert got["predictions"] == expected["predictions"]
    assert (
        max(abs(a - b) for pa, pb in zip(got["probabilities"], expected["probabilities"]) for a, b in zip(pa, pb))
        < 1e-6
    )
    assert requests.get(other.url + "/model").json()["format"] == Path(form).suffix[1:]
    named = {"instances": [dict(zip(names, x[0].tolist()))]}
    assert requests.post(other.url + "/predict", json=named).status_code == 200


def test_skops_types_not_trusted_by_default_are_refused_until_listed(start_server, trained_models):
    srv = start_server({"MODEL_PATH": str(trained_models / "model.skops")}, ready=False)
    assert_not_ready_with_one_log_line(srv, SKOPS_TREE, "SKOPS_TRUSTED")


def test_corrupt_skops_file_is_not_ready(start_server, tmp_path):
    bad = tmp_path / "model.skops"
    bad.write_bytes(b"not a zip file")
    srv = start_server({"MODEL_PATH": str(bad)}, ready=False)
    assert_not_ready_with_one_log_line(srv, "not a valid skops file")


def test_unknown_model_format_is_not_ready(start_server, tmp_path):
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"\x89HDF")
    srv = start_server({"MODEL_PATH": str(odd)}, ready=False)
    assert_not_ready_with_one_log_line(srv, "unknown model format '.h5'")


def test_bad_configuration_exits_with_the_variable_named(start_server):
    import subprocess
    import sys

    from tests.support.server import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "func"],
        cwd=ROOT,
        env={"PORT": "eighty", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "PORT='eighty': expected a whole number" in result.stderr


def test_onnx_path_never_imports_scikit_learn(default_model):
    import subprocess
    import sys

    from tests.support.server import ROOT

    code = (
        "import sys\n"
        "from func.config import Settings\n"
        "from func.api.app import create_app\n"
        f"app = create_app(Settings(model_path={str(default_model)!r}), load=False)\n"
        "app.extensions['warmstart'].load()\n"
        "assert app.extensions['warmstart'].ready\n"
        "heavy = ('sklearn', 'scipy', 'skops', 'joblib', 'pandas')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
