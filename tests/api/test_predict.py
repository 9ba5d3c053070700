"""Predictions over HTTP: every body shape, KServe V1, and agreement with the model itself."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import requests

JSON = {"Content-Type": "application/json"}


def direct(model_path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(model_path))
    labels, probabilities = session.run(None, {"input": rows.astype(np.float32)})
    return labels, probabilities


def test_instances_in_feature_order_match_the_model(server, dataset, default_model):
    x, _ = dataset
    rows = x[:50]
    resp = requests.post(server.url + "/predict", json={"instances": rows.tolist()})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    labels, probabilities = direct(default_model, rows)
    assert body["predictions"] == labels.tolist()
    np.testing.assert_allclose(body["probabilities"], probabilities, rtol=0, atol=1e-7)
    assert body["model"] == {"name": "breast-cancer-rf", "version": "1"}
    assert "probability" not in body


def test_instances_by_feature_name_in_any_key_order(server, dataset):
    x, names = dataset
    by_order = requests.post(server.url + "/predict", json={"instances": x[:5].tolist()}).json()
    named = [dict(reversed(list(zip(names, row)))) for row in x[:5].tolist()]
    resp = requests.post(server.url + "/predict", json={"instances": named})
    assert resp.status_code == 200, resp.text
    assert resp.json() == by_order


def test_one_row_of_features_also_gets_positive_class_probability(server, dataset, default_model):
    x, _ = dataset
    resp = requests.post(server.url + "/predict", json={"features": x[7].tolist()})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _, probabilities = direct(default_model, x[7:8])
    assert body["probability"] == body["probabilities"][0][1]
    assert abs(body["probability"] - float(probabilities[0, 1])) < 1e-7
    assert len(body["predictions"]) == 1


def test_post_root_is_predict_for_plain_json(server, dataset):
    x, _ = dataset
    body = {"instances": x[:3].tolist()}
    assert requests.post(server.url + "/", json=body).json() == requests.post(server.url + "/predict", json=body).json()


def test_request_without_content_type_is_read_as_json(server, dataset):
    x, _ = dataset
    data = ('{"features": [' + ",".join(map(str, x[0])) + "]}").encode()
    resp = requests.post(server.url + "/predict", data=data, headers={"Content-Type": ""})
    assert resp.status_code == 200, resp.text


def test_integer_feature_values_are_accepted(server, card):
    row = [int(round(card["reference"][n]["mean"])) for n in card["feature_names"]]
    resp = requests.post(server.url + "/predict", json={"instances": [row]})
    assert resp.status_code == 200, resp.text


def test_kserve_v1_predict_returns_labels(server, dataset, default_model):
    x, _ = dataset
    resp = requests.post(server.url + "/v1/models/breast-cancer-rf:predict", json={"instances": x[:20].tolist()})
    assert resp.status_code == 200, resp.text
    labels, _ = direct(default_model, x[:20])
    assert resp.json() == {"predictions": labels.tolist()}


def test_kserve_v1_model_status_and_list(server):
    assert requests.get(server.url + "/v1/models/breast-cancer-rf").json() == {
        "name": "breast-cancer-rf",
        "ready": True,
    }
    assert requests.get(server.url + "/v1/models").json() == {"models": ["breast-cancer-rf"]}


def test_every_response_names_the_model(server, dataset):
    x, _ = dataset
    for resp in (
        requests.post(server.url + "/predict", json={"features": x[0].tolist()}),
        requests.post(server.url + "/predict", json={"features": [1]}),
        requests.get(server.url + "/health/liveness"),
        requests.get(server.url + "/nowhere"),
    ):
        assert resp.headers["X-Model-Name"] == "breast-cancer-rf"
        assert resp.headers["X-Model-Version"] == "1"
        assert "X-Revision" not in resp.headers


def test_model_card_endpoint(server, card):
    body = requests.get(server.url + "/model").json()
    assert body["feature_names"] == card["feature_names"]
    assert body["class_labels"] == [0, 1]
    assert body["task"] == "classification"
    assert body["format"] == "onnx"
    assert set(body["reference"]) == set(card["feature_names"])


def test_openapi_describes_every_route(server):
    doc = requests.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in [
        ("/predict", "post"),
        ("/", "post"),
        ("/v1/models/{name}:predict", "post"),
        ("/v1/models/{name}", "get"),
        ("/v1/models", "get"),
        ("/model", "get"),
        ("/health/liveness", "get"),
        ("/health/readiness", "get"),
        ("/openapi.json", "get"),
        ("/metrics", "get"),
        ("/drift", "get"),
    ]:
        assert method in paths[path], path
    assert paths["/predict"]["post"]["responses"]["422"]


def test_openapi_document_is_valid_openapi(server):
    from openapi_spec_validator import validate

    validate(requests.get(server.url + "/openapi.json").json())


def test_name_and_version_come_from_settings_when_set(start_server, dataset):
    x, _ = dataset
    srv = start_server({"MODEL_NAME": "cancer", "MODEL_VERSION": "7", "K_REVISION": "cancer-00007"})
    resp = requests.post(srv.url + "/v1/models/cancer:predict", json={"instances": x[:1].tolist()})
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Model-Name"] == "cancer"
    assert resp.headers["X-Model-Version"] == "7"
    assert resp.headers["X-Revision"] == "cancer-00007"
    body = requests.post(srv.url + "/predict", json={"features": x[0].tolist()}).json()
    assert body["model"] == {"name": "cancer", "version": "7"}
