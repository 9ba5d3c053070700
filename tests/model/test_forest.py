"""The mapped forest (func/model/forest.py): the same answers as onnxruntime on the ONNX
model it was made from, served while onnxruntime builds its session, ignored when stale."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from func.model.export import build_card, to_onnx_bytes
from func.model.forest import forest_bytes, forest_path, open_forest, write_forest
from func.model.trees import Unsupported
from tests.support.server import ROOT, wait_for

N_FEATURES = 8


def _data(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, N_FEATURES)).round(1)  # repeated values: rows on thresholds
    score = x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=n_rows)
    return x, score


def _onnx(estimator, x: np.ndarray) -> bytes:
    card = build_card(estimator, x, [f"f{i}" for i in range(N_FEATURES)], "trees", "1")
    return to_onnx_bytes(estimator, card)


def _estimators():
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    x, score = _data(600)
    binary = score > 0
    three = np.digitize(score, [-0.5, 0.5])
    named = np.array(["low", "mid", "high"])[three]
    return {
        "random forest, binary": (RandomForestClassifier(n_estimators=30, random_state=0), x, binary),
        "random forest, 3 classes": (RandomForestClassifier(n_estimators=30, random_state=0), x, three),
        "extra trees, string classes": (ExtraTreesClassifier(n_estimators=30, random_state=0), x, named),
        "decision tree, 3 classes": (DecisionTreeClassifier(random_state=0), x, three),
        "random forest regressor": (RandomForestRegressor(n_estimators=30, random_state=0), x, score),
        "extra trees regressor": (ExtraTreesRegressor(n_estimators=30, random_state=0), x, score),
        "decision tree regressor": (DecisionTreeRegressor(random_state=0), x, score),
        "gradient boosting regressor": (GradientBoostingRegressor(n_estimators=30, random_state=0), x, score),
    }


def _edge_rows(onnx_bytes: bytes, n_random: int) -> np.ndarray:
    """Random rows, rows whose values sit exactly on split thresholds, NaN and +-inf."""
    from func.model.onnx_reader import read_graph
    from func.model.trees import find_tree_ensemble, read_trees

    trees = read_trees(find_tree_ensemble(read_graph(onnx_bytes)), N_FEATURES)
    rng = np.random.default_rng(7)
    random_rows = rng.normal(size=(n_random, N_FEATURES)).astype(np.float32)
    splits = np.flatnonzero(~trees.is_leaf)
    chosen = rng.choice(splits, size=min(500, len(splits)), replace=False)
    on_threshold = rng.normal(size=(len(chosen), N_FEATURES)).astype(np.float32)
    on_threshold[np.arange(len(chosen)), trees.feature[chosen]] = trees.threshold[chosen].astype(np.float32)
    special = rng.normal(size=(30, N_FEATURES)).astype(np.float32)
    special[:10, rng.integers(0, N_FEATURES, 10)] = np.nan
    special[10:20, rng.integers(0, N_FEATURES, 10)] = np.inf
    special[20:, rng.integers(0, N_FEATURES, 10)] = -np.inf
    return np.concatenate([random_rows, on_threshold, special])


@pytest.mark.parametrize("kind", list(_estimators()))
def test_forest_answers_as_onnxruntime_does(kind, tmp_path):
    import onnxruntime as ort

    estimator, x, y = _estimators()[kind]
    estimator.fit(x, y)
    data = _onnx(estimator, x)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "model.forest").write_bytes(forest_bytes(data, sha))
    forest = open_forest(tmp_path / "model.forest", sha)
    assert forest is not None

    rows = _edge_rows(data, 2000)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: rows})
    labels, values = forest.predict(rows)
    if labels is None:
        np.testing.assert_allclose(values, expected[0].reshape(-1), rtol=1e-6, atol=1e-6)
    else:
        assert labels.tolist() == expected[0].tolist()
        np.testing.assert_allclose(values, expected[1], rtol=1e-6, atol=1e-6)


def test_models_the_forest_cannot_answer_as_onnxruntime_get_none_and_say_why(tmp_path):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    x, score = _data(300)
    boosted = GradientBoostingClassifier(n_estimators=5).fit(x, score > 0)
    scaled = make_pipeline(StandardScaler(), DecisionTreeClassifier()).fit(x, score > 0)
    for estimator, reason in ((boosted, "post_transform LOGISTIC"), (scaled, "preprocessing")):
        data = _onnx(estimator, x)
        with pytest.raises(Unsupported, match=reason):
            forest_bytes(data, "0" * 64)
        out = tmp_path / "model.onnx"
        forest_path(out).write_bytes(b"an old forest")
        assert reason in write_forest(out, data, "0" * 64)
        assert not forest_path(out).exists()


def test_a_forest_made_from_other_bytes_or_truncated_is_not_used(tmp_path, caplog):
    from sklearn.tree import DecisionTreeClassifier

    x, score = _data(300)
    data = _onnx(DecisionTreeClassifier(random_state=0).fit(x, score > 0), x)
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "model.forest"
    path.write_bytes(forest_bytes(data, sha))
    assert open_forest(path, sha) is not None
    assert open_forest(path, "f" * 64) is None
    assert "stale" in caplog.text and "f" * 64 in caplog.text
    path.write_bytes(forest_bytes(data, sha)[:-200])
    caplog.clear()
    assert open_forest(path, sha) is None
    assert "truncated" in caplog.text
    assert open_forest(tmp_path / "none.forest", sha) is None


@pytest.fixture(scope="module")
def large_forest(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A forest of some megabytes, whose onnxruntime session takes a visible while to build."""
    from sklearn.ensemble import RandomForestClassifier

    x, score = _data(5000, seed=3)
    x = x + np.random.default_rng(4).normal(scale=0.01, size=x.shape)  # fully grown: no repeats
    estimator = RandomForestClassifier(n_estimators=150, random_state=0, n_jobs=1).fit(x, score > 0)
    out = tmp_path_factory.mktemp("large") / "model.onnx"
    data = _onnx(estimator, x)
    out.write_bytes(data)
    assert write_forest(out, data, hashlib.sha256(data).hexdigest()) is None
    return out, x[:200].astype(np.float32)


def _evaluator(srv) -> str:
    return requests.get(srv.url + "/model", timeout=5).json()["evaluator"]


def _predict(srv, rows: np.ndarray) -> dict:
    resp = requests.post(srv.url + "/predict", json={"instances": rows.tolist()}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_server_answers_from_the_forest_then_onnxruntime_with_the_same_predictions(start_server, large_forest):
    """The model is ready, answered by the forest, before onnxruntime's session is built
    (the log says so); once it is, onnxruntime's answers are the forest's. The forest's
    are computed here from the same file: asking the server for them would race its
    session build, which a loaded machine can finish before the first request."""
    model, rows = large_forest
    srv = start_server({"MODEL_PATH": str(model), "WORKERS": "1"})
    assert wait_for(lambda: _evaluator(srv) == "onnxruntime", timeout=60)
    after = _predict(srv, rows)
    forest = open_forest(forest_path(model), hashlib.sha256(model.read_bytes()).hexdigest())
    labels, probabilities = forest.predict(rows)
    assert after["predictions"] == labels.tolist()
    np.testing.assert_allclose(probabilities, after["probabilities"], rtol=0, atol=1e-6)
    messages = [json.loads(line)["message"] for line in srv.log().splitlines() if line.startswith("{")]
    assert any("answering from the mapped forest" in m for m in messages)
    assert any("(onnx, answered by forest) ready in" in m for m in messages)
    assert any("onnxruntime session built" in m for m in messages)


def test_a_server_ignores_a_stale_forest_with_one_log_line(start_server, large_forest, default_model, tmp_path):
    model, _ = large_forest
    served = tmp_path / "model.onnx"
    served.write_bytes(default_model.read_bytes())
    forest_path(served).write_bytes(forest_path(model).read_bytes())  # made from other bytes
    srv = start_server({"MODEL_PATH": str(served), "WORKERS": "1"})
    assert _evaluator(srv) == "onnxruntime"
    stale = [line for line in srv.log().splitlines() if "not used" in line]
    assert len(stale) == 1 and "stale" in stale[0]


def test_a_process_leaving_while_onnxruntime_builds_a_session_exits_with_its_own_code(large_forest, tmp_path):
    """The retraining job loads models and exits, a worker refusing its model too; the
    multi-threaded session still being built must not turn the exit code into SIGABRT."""
    model, _ = large_forest
    alone = tmp_path / "model.onnx"  # no forest: load_model returns as the second session starts
    alone.write_bytes(model.read_bytes())
    script = (
        "import sys; from func.config import Settings; from func.model.runtime import load_model; "
        f"load_model(Settings(model_path={str(alone)!r}, inference_threads=2)); sys.exit(7)"
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 7, done.stderr[-2000:]


def test_a_worker_leaving_while_its_loader_builds_the_session_exits_with_its_own_code(large_forest):
    """As in a worker: the app's model loader (a daemon thread) answers from the forest and
    starts onnxruntime's build, and the process leaves at once. A thread is a daemon when
    the thread starting it is one, so the build must say it is not: a daemon still
    building at exit aborted the process (SIGABRT)."""
    model, _ = large_forest
    assert forest_path(model).exists()
    script = (
        "import sys; from func.api.app import create_app; from func.config import Settings; "
        f"app = create_app(Settings(model_path={str(model)!r}, inference_threads=2)); "
        "state = app.extensions['warmstart']; state.wait_loaded(); "
        # onnxruntime has its one-thread session: the multi-threaded one is being built
        "import time\nwhile state.loaded.evaluator != 'onnxruntime': time.sleep(0.001)\n"
        "sys.exit(7)"
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 7, done.stderr[-2000:]


def test_node_ops_names_every_graph_node_without_reading_attributes(large_forest):
    """What decides that onnxruntime may skip graph optimisations (a lone TreeEnsemble)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from func.model.onnx_reader import node_ops

    model, _ = large_forest
    assert node_ops(model.read_bytes()) == [("ai.onnx.ml", "TreeEnsembleClassifier")]
    x, score = _data(300)
    scaled = make_pipeline(StandardScaler(), DecisionTreeClassifier()).fit(x, score > 0)
    ops = node_ops(_onnx(scaled, x))
    assert ("ai.onnx.ml", "Scaler") in ops and ("ai.onnx.ml", "TreeEnsembleClassifier") in ops
