"""Which model files load, which are refused, and what readiness says meanwhile."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests

from tests.support.server import assert_not_ready_with_one_log_line, readiness


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


def with_card_edit(default_model: Path, out: Path, edit) -> Path:
    """The default model with its card's JSON changed by `edit(card)`, written as is: no
    code of ours checks it on the way (it is what a hand-edited or hostile card holds)."""
    import onnx

    model = onnx.load_model(str(default_model))
    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props["warmstart.card"])
    edit(card)
    props["warmstart.card"] = json.dumps(card)
    onnx.helper.set_model_props(model, props)
    out.write_bytes(model.SerializeToString())
    return out


def first_feature(card: dict) -> dict:
    return card["reference"][card["feature_names"][0]]


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (lambda c: c.update(name="模型"), "name '模型' holds '模', which the X-Model-Name header cannot carry"),
        (lambda c: c.update(name="rf\r\nX-Evil: 1"), "name 'rf\\r\\nX-Evil: 1' holds '\\r'"),
        (lambda c: c.update(version="1\n"), "version '1\\n' holds '\\n'"),
        (lambda c: c.update(name="team/rf"), "name 'team/rf' holds '/', which the model's URLs cannot hold"),
        (lambda c: c.update(name="rf:v1"), "name 'rf:v1' holds ':', which the model's URLs cannot hold"),
        (lambda c: c.update(name=""), "name must be a non-empty string, got ''"),
        (lambda c: c.update(class_labels=[[0], [1]]), "class_labels[0] is [0]; a class label is a string"),
        (
            lambda c: first_feature(c).update(fractions=[0.5, 0.5]),
            "reference['mean radius'].fractions has 2 shares, but its 9 bin_edges make 10 bins",
        ),
        (
            lambda c: first_feature(c).update(bin_edges=[str(e) for e in first_feature(c)["bin_edges"]]),
            "reference['mean radius'].bin_edges[0] is '",
        ),
        (
            lambda c: c["prediction_reference"].update(fractions=[1.0]),
            "prediction_reference.fractions has 1 shares for 2 class_labels",
        ),
    ],
    ids=[
        "not-latin-1",
        "crlf-name",
        "lf-version",
        "slash",
        "colon",
        "empty",
        "unhashable-labels",
        "fractions",
        "text-edges",
        "prediction-fractions",
    ],
)
def test_a_bad_model_card_is_refused_with_one_log_line(start_server, tmp_path, default_model, edit, phrase):
    path = with_card_edit(default_model, tmp_path / "model.onnx", edit)
    srv = start_server({"MODEL_PATH": str(path)}, ready=False)
    assert_not_ready_with_one_log_line(srv, "warmstart.card: " + phrase)
    # every route answers, with headers it can carry: /metrics and /drift included
    for route in ("/metrics", "/drift", "/v2/health/live", "/openapi.json"):
        resp = requests.get(srv.url + route, timeout=5)
        assert resp.status_code in (200, 503), (route, resp.status_code, resp.text)
        assert resp.headers["X-Model-Name"] == "model"


@pytest.mark.parametrize("name", ["模型", "rf\tv1", "a/b"])
def test_a_model_name_no_header_or_url_can_hold_is_refused_and_liveness_stays_up(start_server, name):
    srv = start_server({"MODEL_NAME": name}, ready=False)
    assert_not_ready_with_one_log_line(srv, f"MODEL_NAME/MODEL_VERSION: name {name!r} holds")
    assert requests.get(srv.url + "/health/liveness").headers["X-Model-Name"] == "model"


def test_a_latin_1_model_name_is_served_on_every_protocol(start_server, dataset):
    x, _ = dataset
    srv = start_server({"MODEL_NAME": "modèle v2", "MODEL_VERSION": "2024.1 b"})
    resp = requests.post(srv.url + "/v1/models/modèle v2:predict", json={"instances": x[:1].tolist()})
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Model-Name"] == "modèle v2"  # sent as Latin-1, as HTTP headers are
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": x[0].tolist()}]}
    resp = requests.post(srv.url + "/v2/models/modèle v2/versions/2024.1 b/infer", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model_name"] == "modèle v2"
