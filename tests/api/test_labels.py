"""Models whose class labels are strings, integers or booleans, and a regressor, answer
with the labels they were trained on over every protocol: own API, V1, V2 (JSON and
binary), CloudEvents in both modes, and batch jobs."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from tests.support.scripts import run_script
from tests.support.server import ServerProcess

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# Two rows the models tell apart: a setosa and a virginica.
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.5, 3.0, 5.5, 2.0]]


def _targets(kind: str, iris) -> np.ndarray:
    return {
        "string": np.array(iris.target_names)[iris.target],
        "integer": iris.target + 10,
        "boolean": iris.target == 2,
        "regression": iris.target * 1.5 + 0.25,
    }[kind]


@pytest.fixture(scope="module", params=["string", "integer", "boolean", "regression"])
def served(request, tmp_path_factory) -> Iterator[tuple[ServerProcess, object, Path]]:
    """(a server on the exported model, the scikit-learn original, its batch folder)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kind = request.param
    iris = load_iris()
    y = _targets(kind, iris)
    if kind == "regression":
        model = LinearRegression().fit(iris.data, y)
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(iris.data, y)
    folder = tmp_path_factory.mktemp(kind)
    joblib.dump(model, folder / "model.joblib")
    with (folder / "sample.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([FEATURES, *iris.data.tolist()])
    result = run_script(
        "scripts/export_onnx.py", str(folder / "model.joblib"), str(folder / "sample.csv"), str(folder / "m.onnx")
    )
    assert result.returncode == 0, result.stderr
    data = folder / "data"
    data.mkdir()
    env = {"MODEL_PATH": str(folder / "m.onnx"), "BATCH_ALLOW": str(data), "PREDICTION_LOG": str(folder / "log")}
    server = ServerProcess({**env, "PREDICTION_LOG_FLUSH_S": "0.1"}, log_dir=folder).start()
    try:
        server.wait_ready()
        yield server, model, data
    finally:
        server.kill()


def assert_labels(actual: list, model, rows: int = len(ROWS)) -> None:
    want = model.predict(np.array(ROWS[:rows])).tolist()
    if isinstance(want[0], float):
        np.testing.assert_allclose(actual, want, rtol=1e-5)
    else:
        assert actual == want
        assert [type(v) for v in actual] == [type(v) for v in want]


def test_predict_and_v1_answer_with_the_trained_labels(served):
    server, model, _ = served
    for path in ("/predict", "/", "/v1/models/m:predict"):
        resp = requests.post(server.url + path, json={"instances": ROWS})
        assert resp.status_code == 200, resp.text
        assert_labels(resp.json()["predictions"], model)
    resp = requests.post(server.url + "/predict", json={"features": ROWS[0]})
    assert resp.status_code == 200, resp.text
    assert_labels(resp.json()["predictions"], model, rows=1)


def test_v2_json_and_binary_outputs_carry_the_trained_labels(served):
    server, model, _ = served
    first = json.loads(requests.get(server.url + "/v2/models/m").text)["outputs"][0]
    tensor = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": sum(ROWS, [])}
    url = server.url + "/v2/models/m/infer"
    resp = requests.post(url, json={"inputs": [tensor]})
    assert resp.status_code == 200, resp.text
    output = resp.json()["outputs"][0]
    assert output["datatype"] == first["datatype"]
    assert_labels(output["data"], model)

    resp = requests.post(url, json={"inputs": [tensor], "parameters": {"binary_data_output": True}})
    assert resp.status_code == 200, resp.text
    split = int(resp.headers["Inference-Header-Content-Length"])
    output = json.loads(resp.content[:split])["outputs"][0]
    raw = resp.content[split : split + output["parameters"]["binary_data_size"]]
    assert_labels(_from_raw(raw, output["datatype"]), model)


def _from_raw(raw: bytes, datatype: str) -> list:
    if datatype == "BYTES":
        values, at = [], 0
        while at < len(raw):
            size = int.from_bytes(raw[at : at + 4], "little")
            values.append(raw[at + 4 : at + 4 + size].decode())
            at += 4 + size
        return values
    dtype = {"BOOL": np.bool_, "INT64": "<i8", "FP32": "<f4"}[datatype]
    return np.frombuffer(raw, dtype=dtype).tolist()


@pytest.mark.parametrize("encode", [to_binary, to_structured], ids=["binary", "structured"])
def test_predict_events_answer_with_the_trained_labels(served, encode):
    server, model, _ = served
    event = CloudEvent({"type": "warmstart.predict.v1", "source": "/tests"}, {"instances": ROWS})
    headers, body = encode(event)
    resp = requests.post(server.url + "/", data=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert_labels(from_http(resp.headers, resp.content).data["predictions"], model)


def test_batch_output_holds_the_trained_labels(served):
    server, model, data = served
    with (data / "in.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([FEATURES, *ROWS])
    event = CloudEvent(
        {"type": "warmstart.batch.v1", "source": "/tests"},
        {"input": str(data / "in.csv"), "output": str(data / "out.jsonl")},
    )
    headers, body = to_binary(event)
    resp = requests.post(server.url + "/", data=body, headers=headers)
    assert resp.status_code == 200, resp.text
    lines = [json.loads(line) for line in (data / "out.jsonl").read_text().splitlines()]
    assert_labels([line["prediction"] for line in lines], model)


def test_feedback_takes_labels_of_the_trained_type_and_scores_them(served):
    """A label is a class as the model has it (a string, a number, a boolean) or, for a
    regressor, a value: the scores on /metrics count it, and a label of another type is a 422."""
    from prometheus_client.parser import text_string_to_metric_families

    server, model, _ = served
    resp = requests.post(server.url + "/predict", json={"instances": ROWS})
    pid = resp.headers["X-Prediction-Id"]
    truth = model.predict(np.array(ROWS)).tolist()
    if isinstance(truth[0], float):
        truth = [truth[0] + 0.5, truth[1] - 2.0]  # errors of 0.5 and 2
    labels = [{"id": f"{pid}/{r}", "label": y} for r, y in enumerate(truth)]
    answer = requests.post(server.url + "/feedback", json={"feedback": labels})
    assert answer.json() == {"accepted": 2, "matched": 2, "reported": 0, "unmatched": 0}, answer.text
    text = requests.get(server.url + "/metrics").text
    samples = {
        (s.name, s.labels.get("class", "")): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    if isinstance(truth[0], float):
        assert samples[("warmstart_feedback_absolute_error_total", "")] == pytest.approx(2.5, rel=1e-5)
        assert samples[("warmstart_feedback_squared_error_total", "")] == pytest.approx(4.25, rel=1e-5)
        wrong = {"id": pid, "label": "1.5"}
    else:
        assert sum(v for (name, _), v in samples.items() if name == "warmstart_feedback_correct_total") == 2
        assert samples[("warmstart_feedback_correct_total", str(truth[1]))] >= 1
        wrong = {"id": pid, "label": [truth[0]]}
    refused = requests.post(server.url + "/feedback", json={"feedback": [wrong]})
    assert refused.status_code == 422 and refused.json()["error"]["message"].startswith("feedback[0].label: ")


def test_the_prediction_log_keeps_the_trained_labels(served):
    import pyarrow.dataset as ds

    from tests.support.server import wait_for

    server, model, data = served
    resp = requests.post(server.url + "/predict", json={"instances": ROWS, "id": "labels-in-the-log"})
    assert resp.status_code == 200
    log = data.parent / "log" / "predictions"

    def logged() -> list:
        if not log.exists():
            return []
        table = ds.dataset(log).to_table()
        return [
            p
            for i, p in zip(table.column("id").to_pylist(), table.column("prediction").to_pylist())
            if i.startswith("labels-in-the-log/")
        ]

    assert_labels(wait_for(logged, timeout=20), model)


def test_metrics_carry_the_prediction_mix_the_card_expects(served):
    """The canary analysis' yardstick without labels: each class's share of the model's
    answers on its card's data, or a regressor's cumulative share at each value bucket
    bound, under the trained labels."""
    from prometheus_client.parser import text_string_to_metric_families
    from sklearn.datasets import load_iris

    server, model, _ = served
    text = requests.get(server.url + "/metrics").text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    answers = model.predict(load_iris().data)
    if isinstance(answers[0], float | np.floating):
        expected = {
            s.labels["le"]: s.value for s in samples if s.name == "warmstart_prediction_value_reference_fraction"
        }
        buckets = [s.labels["le"] for s in samples if s.name == "warmstart_prediction_value_bucket"]
        assert list(expected) == buckets and expected["+Inf"] == pytest.approx(1.0)
        assert list(expected.values()) == sorted(expected.values())
        for bound, share in expected.items():
            assert share == pytest.approx(np.mean(answers <= float(bound)), abs=1e-9), bound
    else:
        expected = {s.labels["class"]: s.value for s in samples if s.name == "warmstart_prediction_reference_fraction"}
        assert expected == {str(label): pytest.approx(np.mean(answers == label)) for label in model.classes_}
