"""scripts/train.py and scripts/export_onnx.py, run as a user runs them."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.support.scripts import run_script
from tests.support.server import ROOT, ServerProcess


def run_with_umask_022(*args: str) -> subprocess.CompletedProcess[str]:
    """As the image build runs it (root, umask 022)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, umask=0o022)


def onnx_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path))
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})


def write_csv(path: Path, header: list[str], rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header + list(extra or {}))
        for i, row in enumerate(rows.tolist()):
            writer.writerow(row + [col[i] for col in (extra or {}).values()])


def test_training_is_deterministic(tmp_path, trained_models, dataset):
    x, _ = dataset
    result = run_script("scripts/train.py", "--out", str(tmp_path / "again.onnx"))
    assert result.returncode == 0, result.stderr
    assert "max ONNX difference" in result.stdout
    first = onnx_outputs(trained_models / "model.onnx", x)
    second = onnx_outputs(tmp_path / "again.onnx", x)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize(
    ("script", "continued"),
    [
        ("submit_batch.py", "http://broker-ingress/ns/default \\\n        [--parallel 4]"),
        ("export_onnx.py", "models/model.onnx \\\n        [--target label]"),
        ("write_card.py", "sample.csv \\\n        [--target label]"),
    ],
)
def test_script_help_keeps_the_example_lines(script, continued):
    result = run_script(f"scripts/{script}", "--help")
    assert result.returncode == 0, result.stderr
    assert continued in result.stdout


def test_trained_and_exported_models_are_world_readable(tmp_path, dataset):
    """The image trains as root and serves as uid 10001: a 0600 model is unreadable."""
    from sklearn.linear_model import LogisticRegression

    result = run_with_umask_022("scripts/train.py", "--out", str(tmp_path / "trained.onnx"), "--joblib")
    assert result.returncode == 0, result.stderr
    x, names = dataset
    joblib.dump(LogisticRegression(max_iter=5000).fit(x, x[:, 0] > 14), tmp_path / "lr.joblib")
    write_csv(tmp_path / "sample.csv", names, x[:100])
    result = run_with_umask_022(
        "scripts/export_onnx.py", str(tmp_path / "lr.joblib"), str(tmp_path / "sample.csv"), str(tmp_path / "lr.onnx")
    )
    assert result.returncode == 0, result.stderr
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir() if p.suffix in (".onnx", ".joblib")}
    assert modes == {"trained.onnx": "0o644", "trained.joblib": "0o644", "lr.onnx": "0o644", "lr.joblib": "0o644"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file is left"


def test_trained_onnx_has_card_and_plain_probability_tensor(trained_models):
    session = ort.InferenceSession(str(trained_models / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    assert session.get_outputs()[1].type == "tensor(float)"  # not a ZipMap
    meta = session.get_modelmeta().custom_metadata_map
    assert '"feature_names": ["mean radius"' in meta["warmstart.card"]
    assert (trained_models / "model.card.json").is_file()


def test_export_users_model_then_serve_it(tmp_path, start_server, dataset):
    from sklearn.ensemble import GradientBoostingClassifier

    x, names = dataset
    y = (x[:, 0] > 14).astype(int)
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(x, y)
    joblib.dump(model, tmp_path / "gb.joblib")
    write_csv(tmp_path / "sample.csv", names, x[:200], {"label": y[:200]})

    out = tmp_path / "gb.onnx"
    args = [str(tmp_path / "gb.joblib"), str(tmp_path / "sample.csv"), str(out)]
    result = run_script("scripts/export_onnx.py", *args, "--target", "label", "--name", "gb", "--version", "3")
    assert result.returncode == 0, result.stderr
    assert "max difference from the original on 200 rows" in result.stdout

    srv = start_server({"MODEL_PATH": str(out)})
    body = requests.post(srv.url + "/predict", json={"instances": [dict(zip(names, x[5].tolist()))]}).json()
    assert body["model"] == {"name": "gb", "version": "3"}
    np.testing.assert_allclose(body["probabilities"], model.predict_proba(x[5:6]), atol=1e-5)


def test_export_hist_gradient_boosting_fitted_on_a_dataframe_then_serve_it_on_every_protocol(
    tmp_path, start_server, dataset
):
    """One of scikit-learn's most used models: skl2onnx's converter gave onnx a bool
    where it takes ints, and the export died in a 37,000-line traceback."""
    import pandas as pd
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent, from_http
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, names = dataset
    y = (x[:, 0] > 14).astype(int)
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(pd.DataFrame(x, columns=names), y)
    joblib.dump(model, tmp_path / "hgb.joblib")
    write_csv(tmp_path / "sample.csv", names, x[:200])
    out = tmp_path / "hgb.onnx"
    result = run_script("scripts/export_onnx.py", str(tmp_path / "hgb.joblib"), str(tmp_path / "sample.csv"), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "feature names" not in result.stderr, "predicting on the DataFrame it was fitted on: no warning"

    srv = start_server({"MODEL_PATH": str(out)})
    rows = x[:3].tolist()
    expected = model.predict_proba(pd.DataFrame(x[:3], columns=names))
    own = requests.post(srv.url + "/predict", json={"instances": rows}, timeout=10).json()
    np.testing.assert_allclose(own["probabilities"], expected, atol=1e-5)
    v1 = requests.post(srv.url + "/v1/models/hgb:predict", json={"instances": rows}, timeout=10).json()
    assert v1["predictions"] == own["predictions"] == model.predict(pd.DataFrame(x[:3], columns=names)).tolist()
    tensor = {"name": "input", "shape": [3, 30], "datatype": "FP64", "data": x[:3].ravel().tolist()}
    v2 = requests.post(srv.url + "/v2/models/hgb/infer", json={"inputs": [tensor]}, timeout=10).json()
    outputs = {o["name"]: o["data"] for o in v2["outputs"]}
    assert outputs["label"] == own["predictions"]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"], (3, 2)), expected, atol=1e-5)
    event = CloudEvent({"type": "warmstart.predict.v1", "source": "/tests", "id": "hgb-1"}, {"instances": rows})
    headers, body = to_binary(event)
    resp = requests.post(srv.url + "/", headers=headers, data=body, timeout=10)
    assert from_http(resp.headers, resp.content).data == own


def test_a_model_skl2onnx_cannot_convert_is_one_clear_line(tmp_path, dataset):
    from sklearn.kernel_ridge import KernelRidge

    x, names = dataset
    joblib.dump(KernelRidge().fit(x, x[:, 0]), tmp_path / "kr.joblib")
    write_csv(tmp_path / "sample.csv", names, x[:50])
    out = tmp_path / "kr.onnx"
    result = run_script("scripts/export_onnx.py", str(tmp_path / "kr.joblib"), str(tmp_path / "sample.csv"), str(out))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: skl2onnx cannot convert KernelRidge to ONNX: Unable to find a shape calculator for type "
        f"'<class 'sklearn.kernel_ridge.KernelRidge'>'.; {out} was not written"
    ]
    assert not out.exists()


def test_export_regressor_serves_values_without_probabilities(tmp_path, start_server):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    model = Ridge().fit(data.data, data.target)
    joblib.dump(model, tmp_path / "ridge.joblib")
    write_csv(tmp_path / "sample.csv", list(data.feature_names), data.data[:100])
    out = tmp_path / "ridge.onnx"
    result = run_script(
        "scripts/export_onnx.py", str(tmp_path / "ridge.joblib"), str(tmp_path / "sample.csv"), str(out)
    )
    assert result.returncode == 0, result.stderr

    srv = start_server({"MODEL_PATH": str(out)})
    body = requests.post(srv.url + "/predict", json={"instances": data.data[:3].tolist()}).json()
    assert "probabilities" not in body
    np.testing.assert_allclose(body["predictions"], model.predict(data.data[:3]), rtol=1e-5)


def test_export_fails_when_onnx_disagrees_with_the_original(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Variation far below float32 resolution at 1e6: the ONNX model (float32 input)
    # cannot see what the float64 original learned from.
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(0, 0.01, size=(200, 2))
    y = (x[:, 0] > 1e6).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    joblib.dump(model, tmp_path / "fragile.joblib")
    write_csv(tmp_path / "sample.csv", ["a", "b"], x)
    out = tmp_path / "fragile.onnx"
    out.write_bytes(b"the model being served")
    result = run_script(
        "scripts/export_onnx.py", str(tmp_path / "fragile.joblib"), str(tmp_path / "sample.csv"), str(out)
    )
    assert result.returncode == 1
    assert "disagrees with the original" in result.stderr
    assert f"{out} was not written" in result.stderr
    assert out.read_bytes() == b"the model being served"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fragile.joblib", "fragile.onnx", "sample.csv"]


def test_export_rejects_a_sample_with_the_wrong_columns(tmp_path, dataset):
    from sklearn.tree import DecisionTreeClassifier

    x, names = dataset
    joblib.dump(DecisionTreeClassifier(max_depth=2).fit(x, x[:, 0] > 14), tmp_path / "tree.joblib")
    write_csv(tmp_path / "sample.csv", names[:10], x[:20, :10])
    result = run_script(
        "scripts/export_onnx.py", str(tmp_path / "tree.joblib"), str(tmp_path / "sample.csv"), str(tmp_path / "t.onnx")
    )
    assert result.returncode != 0
    assert "10 feature columns, but the model takes 30" in result.stderr


def test_export_refuses_a_name_the_server_could_not_serve(tmp_path, dataset):
    from sklearn.tree import DecisionTreeClassifier

    x, names = dataset
    joblib.dump(DecisionTreeClassifier(max_depth=2).fit(x, x[:, 0] > 14), tmp_path / "tree.joblib")
    write_csv(tmp_path / "sample.csv", names, x[:20])
    for script, out in (("scripts/export_onnx.py", [str(tmp_path / "t.onnx")]), ("scripts/write_card.py", [])):
        result = run_script(script, str(tmp_path / "tree.joblib"), str(tmp_path / "sample.csv"), *out, "--name", "a/b")
        assert result.returncode != 0
        assert result.stderr == "error: model card: name 'a/b' holds '/', which the model's URLs cannot hold\n"
    assert not (tmp_path / "t.onnx").exists() and not (tmp_path / "tree.card.json").exists()


def test_write_card_gives_a_joblib_model_its_card(tmp_path, start_server, dataset):
    from sklearn.tree import DecisionTreeClassifier

    x, names = dataset
    y = np.where(x[:, 0] > 14, "large", "small")
    joblib.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y), tmp_path / "tree.joblib")
    write_csv(tmp_path / "sample.csv", names, x[:100], {"label": y[:100]})
    result = run_script(
        "scripts/write_card.py", str(tmp_path / "tree.joblib"), str(tmp_path / "sample.csv"),
        "--target", "label", "--name", "tree", "--version", "7",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'tree.card.json'} (classification, 30 features)"

    srv = start_server({"MODEL_PATH": str(tmp_path / "tree.joblib"), "ALLOW_PICKLE": "1"})
    card = requests.get(srv.url + "/model").json()
    assert (card["name"], card["version"], card["feature_names"]) == ("tree", "7", names)
    assert card["class_labels"] == ["large", "small"] and card["reference"]
    body = requests.post(srv.url + "/predict", json={"instances": [dict(zip(names, x[0].tolist()))]}).json()
    assert body["predictions"] == ["large"]


def readme_commands(prefix: str) -> list[str]:
    """The README's `$ <command>` lines that start with `prefix`, continuation lines joined."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [line[2:] for line in text.splitlines() if line.startswith("$ " + prefix)]


def test_readme_batch_examples_work_as_written_on_a_fresh_clone(tmp_path, start_server):
    """From a checkout with an empty data/ folder and the default BATCH_ALLOW (./data/)."""
    (tmp_path / "data").mkdir()
    server = ServerProcess({"PYTHONPATH": str(ROOT)}, log_dir=tmp_path)
    server.cwd = tmp_path
    server.start()
    try:
        server.wait_ready()
        commands = [
            *readme_commands(".venv/bin/python scripts/sample_data.py"),
            *readme_commands("curl -si localhost:8080/ "),
            *readme_commands(".venv/bin/python scripts/submit_batch.py"),
        ]
        outputs = []
        for command in commands:
            command = command.replace(".venv/bin/python scripts/", f"{sys.executable} {ROOT}/scripts/")
            command = command.replace("localhost:8080", f"127.0.0.1:{server.port}")
            result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            outputs.append(result.stdout)
    finally:
        server.kill()
    assert "wrote data/patients.csv (1000 rows)" in outputs[0]
    batch_reply = next(out for out in outputs if "warmstart.batch.completed.v1" in out)
    assert '"rows":1000' in batch_reply
    assert "4 parts: 4 completed (1000 rows), 0 accepted for async delivery, 0 failed" in outputs[-1]
    assert sorted(p.name for p in (tmp_path / "data" / "scored").iterdir()) == [f"part-00{i}.parquet" for i in range(4)]
