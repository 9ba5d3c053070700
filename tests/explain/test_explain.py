"""Explanations over HTTP: attributions add up to the output, agree with the shap package
and with closed forms, and bad rows are refused exactly as /predict refuses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.support.server import ROOT

# shap's plotting colours use matplotlib calls matplotlib has marked for removal.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

TREE = "tree_shap_path_dependent"
EXACT = "shapley_exact"
SAMPLED = "shapley_permutation"


def explain(url: str, body: Any, path: str = "/explain") -> dict:
    resp = requests.post(url + path, json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def attributions(body: dict, names: list[str]) -> np.ndarray:
    return np.array([[row["attributions"][name] for name in names] for row in body["explanations"]])


def column(body: dict, key: str) -> np.ndarray:
    return np.array([row[key] for row in body["explanations"]])


def export(out: Path, estimator: Any, x: np.ndarray, names: list[str], with_counts: bool = True) -> Path:
    """Export a fitted estimator the way users do (scripts/export_onnx.py); without counts,
    the tree nodes get back skl2onnx's placeholder hit rates, as a plain skl2onnx export has."""
    import onnx

    from scripts import export_onnx

    card = export_onnx.build_card(estimator, x, names, out.stem, "1")
    assert export_onnx.write_model(estimator, card, x, out) < export_onnx.MAX_DIFFERENCE
    if not with_counts:
        model = onnx.load(out)
        for node in model.graph.node:
            for attribute in node.attribute:
                if attribute.name == "nodes_hitrates":
                    attribute.floats[:] = [1.0] * len(attribute.floats)
        onnx.save(model, out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, dataset) -> dict[str, tuple[Path, Any, np.ndarray, list[str]]]:
    """Small models of every kind, fitted and exported to ONNX: name -> (path, estimator,
    training rows, feature names)."""
    from sklearn.datasets import load_diabetes, load_iris, make_regression
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression

    out = tmp_path_factory.mktemp("explain-models")
    cancer, cancer_names = dataset
    cancer_y = (cancer[:, 0] > 14).astype(int)
    iris = load_iris()
    diabetes = load_diabetes()
    wide_x, wide_y = make_regression(300, 14, random_state=0)
    fits = {
        "gb_classifier": (GradientBoostingClassifier(n_estimators=30, random_state=0), cancer, cancer_y, cancer_names),
        "gb_multiclass": (
            GradientBoostingClassifier(n_estimators=10, random_state=0),
            iris.data,
            iris.target,
            [str(n) for n in iris.feature_names],
        ),
        "gb_regressor": (
            GradientBoostingRegressor(n_estimators=30, random_state=0),
            diabetes.data,
            diabetes.target,
            [str(n) for n in diabetes.feature_names],
        ),
        "linear": (LinearRegression(), diabetes.data, diabetes.target, [str(n) for n in diabetes.feature_names]),
        "linear_wide": (LinearRegression(), wide_x, wide_y, [f"x{i}" for i in range(14)]),
        "logistic": (LogisticRegression(max_iter=5000), cancer, cancer_y, cancer_names),
        "forest_without_counts": (
            RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
            cancer,
            cancer_y,
            cancer_names,
        ),
    }
    exported = {}
    for name, (estimator, x, y, names) in fits.items():
        estimator.fit(x, y)
        path = export(out / f"{name}.onnx", estimator, x, names, with_counts=name != "forest_without_counts")
        exported[name] = (path, estimator, x, names)
    return exported


def serve(start_server, models, name: str):
    return start_server({"MODEL_PATH": str(models[name][0])})


def test_default_forest_is_explained_exactly_per_feature_name(server, dataset):
    x, names = dataset
    body = explain(server.url, {"instances": x[:3].tolist()})
    assert body["method"] == TREE
    assert body["output_space"] == "probability"
    assert body["model"] == {"name": "breast-cancer-rf", "version": "1"}
    row = body["explanations"][0]
    assert list(row["attributions"]) == names
    assert set(row) == {"prediction", "class", "output", "base_value", "attributions"}
    assert row["class"] == row["prediction"]  # the predicted class is the one explained


@pytest.mark.parametrize(
    ("name", "method", "space"),
    [
        ("gb_classifier", TREE, "log_odds"),
        ("gb_multiclass", TREE, "margin"),
        ("gb_regressor", TREE, "value"),
        ("linear", EXACT, "value"),
        ("linear_wide", SAMPLED, "value"),
        ("logistic", SAMPLED, "probability"),
        ("forest_without_counts", SAMPLED, "probability"),
    ],
)
def test_attributions_add_up_to_the_model_output(start_server, models, name, method, space):
    srv = serve(start_server, models, name)
    _, _, x, names = models[name]
    rows = x[::37][:6]
    body = explain(srv.url, {"instances": rows.tolist()})
    assert (body["method"], body["output_space"]) == (method, space)
    total = attributions(body, names).sum(axis=1) + column(body, "base_value")
    np.testing.assert_allclose(total, column(body, "output"), rtol=1e-9, atol=1e-9)
    predicted = requests.post(srv.url + "/predict", json={"instances": rows.tolist()}).json()
    explained = column(body, "output")
    if space == "value":
        np.testing.assert_allclose(explained, predicted["predictions"], rtol=1e-5)
    elif space in ("probability", "log_odds"):
        probability = np.max(predicted["probabilities"], axis=1)
        if space == "log_odds":
            explained = 1 / (1 + np.exp(-explained))
        np.testing.assert_allclose(explained, probability, atol=1e-6)
    assert column(body, "prediction").tolist() == predicted["predictions"]


def test_default_forest_agrees_with_shap(server, trained_models, dataset):
    import joblib
    import shap

    x, names = dataset
    rows = x[::20].astype(np.float32)  # the server sees float32 rows: so must shap
    forest = joblib.load(trained_models / "model.joblib")  # the default model, before export
    body = explain(server.url, {"instances": rows.tolist()})
    explainer = shap.TreeExplainer(forest)
    expected = np.asarray(explainer.shap_values(rows.astype(np.float64)))  # (rows, features, classes)
    explained = column(body, "class").astype(int)
    np.testing.assert_allclose(attributions(body, names), expected[np.arange(len(rows)), :, explained], atol=1e-6)
    np.testing.assert_allclose(column(body, "base_value"), np.asarray(explainer.expected_value)[explained], atol=1e-6)


def test_gradient_boosting_agrees_with_shap_in_log_odds(start_server, models):
    import shap

    path, booster, x, names = models["gb_classifier"]
    srv = start_server({"MODEL_PATH": str(path)})
    rows = x[::20].astype(np.float32)
    body = explain(srv.url, {"instances": rows.tolist()})
    explainer = shap.TreeExplainer(booster)  # log-odds of class 1
    expected = np.asarray(explainer.shap_values(rows.astype(np.float64)))
    # Class 0's log-odds are class 1's, negated.
    sign = np.where(column(body, "class") == 1, 1.0, -1.0)
    np.testing.assert_allclose(attributions(body, names), expected * sign[:, None], atol=1e-5)
    np.testing.assert_allclose(column(body, "base_value"), sign * np.ravel(explainer.expected_value)[0], atol=1e-5)


@pytest.mark.parametrize(("name", "method"), [("linear", EXACT), ("linear_wide", SAMPLED)])
def test_linear_model_gets_its_closed_form(start_server, models, name, method):
    path, linear, x, names = models[name]
    srv = start_server({"MODEL_PATH": str(path)})
    rows = x[:5]
    body = explain(srv.url, {"instances": rows.tolist()})
    assert body["method"] == method
    # Shapley values of w.x + b against the baseline m are w_i (x_i - m_i), the training means here.
    closed_form = linear.coef_ * (rows - x.mean(axis=0))
    scale = np.abs(closed_form).max()
    np.testing.assert_allclose(attributions(body, names), closed_form, atol=1e-5 * scale)
    at_means = linear.predict(x.mean(axis=0)[None])[0]
    np.testing.assert_allclose(column(body, "base_value"), np.full(len(rows), at_means), rtol=1e-5)


def test_sampled_explanations_are_the_same_every_time(start_server, models):
    srv = serve(start_server, models, "logistic")
    rows = models["logistic"][2][:4].tolist()
    first = explain(srv.url, {"instances": rows})
    assert first["method"] == SAMPLED
    assert explain(srv.url, {"instances": rows}) == first


def test_joblib_model_is_explained_with_shapley_values(start_server, trained_models, dataset):
    x, names = dataset
    srv = start_server({"MODEL_PATH": str(trained_models / "model.joblib"), "ALLOW_PICKLE": "1"})
    body = explain(srv.url, {"instances": x[:2].tolist()})
    assert (body["method"], body["output_space"]) == (SAMPLED, "probability")
    total = attributions(body, names).sum(axis=1) + column(body, "base_value")
    np.testing.assert_allclose(total, column(body, "output"), rtol=1e-9)


def test_rows_by_name_and_one_features_row_explain_like_rows_in_order(server, dataset):
    x, names = dataset
    in_order = explain(server.url, {"instances": x[:2].tolist()})
    by_name = explain(server.url, {"instances": [dict(zip(names, row)) for row in x[:2].tolist()]})
    one = explain(server.url, {"features": x[0].tolist()})
    assert by_name["explanations"] == in_order["explanations"]
    assert one["explanations"] == in_order["explanations"][:1]


def test_v1_explain_answers_predictions_and_explanations(server, dataset):
    x, _ = dataset
    body = explain(server.url, {"instances": x[:3].tolist()}, "/v1/models/breast-cancer-rf:explain")
    plain = explain(server.url, {"instances": x[:3].tolist()})
    assert body["predictions"] == [row["prediction"] for row in plain["explanations"]]
    assert body["explanations"] == plain["explanations"]
    assert body["method"] == TREE
    resp = requests.post(server.url + "/v1/models/other:explain", json={"instances": x[:1].tolist()})
    assert resp.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [[1.0, 2.0]]},
        {"instances": [[None] * 30]},
        {"instances": [["1.5"] + [1.0] * 29]},
        {"instances": [{"mean radius": 1.0, "colour": 2.0}]},
        {"instances": []},
        {"features": [1.0] * 29},
        {"rows": [[1.0] * 30]},
        [1.0] * 30,
    ],
)
def test_bad_rows_get_the_same_422_as_predict(server, body):
    for explain_path, predict_path in (
        ("/explain", "/predict"),
        ("/v1/models/breast-cancer-rf:explain", "/v1/models/breast-cancer-rf:predict"),
    ):
        explained = requests.post(server.url + explain_path, json=body)
        predicted = requests.post(server.url + predict_path, json=body)
        assert explained.status_code == 422, explained.text
        assert explained.json() == predicted.json()


def test_non_finite_value_gets_the_same_422_as_predict(server):
    body = b'{"instances": [[NaN' + b", 1.0" * 29 + b"]]}"
    headers = {"Content-Type": "application/json"}
    explained = requests.post(server.url + "/explain", data=body, headers=headers)
    assert explained.status_code == 422
    assert explained.json() == requests.post(server.url + "/predict", data=body, headers=headers).json()


def test_more_rows_than_one_explanation_takes_get_413_before_the_model_runs(start_server, dataset):
    x, _ = dataset
    srv = start_server()
    resp = requests.post(srv.url + "/explain", json={"instances": x[:101].tolist()})
    assert resp.status_code == 413
    assert "101 rows" in resp.json()["error"]["message"]
    # nothing was predicted: no rows counted
    metrics = requests.get(srv.url + "/metrics").text
    assert not [line for line in metrics.splitlines() if line.startswith("warmstart_rows_total{")], metrics


def test_openapi_lists_the_explain_routes(server):
    doc = requests.get(server.url + "/openapi.json").json()
    assert "post" in doc["paths"]["/explain"]
    assert "post" in doc["paths"]["/v1/models/{name}:explain"]
    assert "Explanation" in doc["components"]["schemas"]


def test_predictions_never_load_the_explainers(default_model):
    code = (
        "import sys\n"
        "from func.config import Settings\n"
        "from func.api.app import create_app\n"
        f"app = create_app(Settings(model_path={str(default_model)!r}), load=False)\n"
        "app.extensions['warmstart'].load()\n"
        "client = app.test_client()\n"
        "lazy = ('func.explain.tree_shap', 'func.model.onnx_reader', 'func.explain.shapley')\n"
        "assert client.post('/predict', json={'features': [1.0] * 30}).status_code == 200\n"
        "print('loaded:', sorted(m for m in lazy if m in sys.modules))\n"
        "assert client.post('/explain', json={'features': [1.0] * 30}).status_code == 200\n"
        "print('loaded:', sorted(m for m in lazy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = [line for line in result.stdout.splitlines() if line.startswith("loaded:")]  # not the access log
    assert loaded == ["loaded: []", "loaded: ['func.explain.tree_shap', 'func.model.onnx_reader']"]


def test_model_without_training_means_gets_501_and_still_predicts(start_server, tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    linear = LinearRegression().fit(x, x @ [1.0, 2.0, 3.0])
    path = tmp_path / "no_card.onnx"
    path.write_bytes(to_onnx(linear, x[:1].astype(np.float32)).SerializeToString())  # no warmstart card
    srv = start_server({"MODEL_PATH": str(path)})
    for _ in range(2):
        resp = requests.post(srv.url + "/explain", json={"instances": x[:1].tolist()})
        assert resp.status_code == 501
        assert "no training mean for 'f0'" in resp.json()["error"]["message"]
    assert requests.post(srv.url + "/predict", json={"instances": x[:1].tolist()}).status_code == 200
