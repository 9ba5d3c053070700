"""Open Inference Protocol V2 with a client we did not write (tritonclient), and raw errors."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

MODEL = "breast-cancer-rf"
DEEP = functools.reduce(lambda inner, _: [inner], range(300), [])  # past orjson's 254 levels of output


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def infer(client, x: np.ndarray, datatype: str = "FP32", binary_in: bool = False, outputs=None, **kw):
    tensor = triton.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64), binary_data=binary_in)
    return client.infer(MODEL, [tensor], outputs=outputs, **kw)


def test_server_and_model_metadata(client, card):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata() == {
        "name": "warmstart",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert meta["parameters"]["feature_names"] == card["feature_names"]
    assert client.get_model_metadata(MODEL, "1") == meta


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_predict(client, server, dataset, datatype, binary):
    x, _ = dataset
    rows = x[:64]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = infer(client, rows, datatype, binary_in=binary, outputs=outputs, request_id="r-1")
    expected = requests.post(server.url + "/predict", json={"instances": rows.tolist()}).json()
    assert result.as_numpy("label").tolist() == expected["predictions"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-7)
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == "1"


def test_output_selection(client, dataset):
    x, _ = dataset
    only_probabilities = infer(client, x[:3], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
    assert [o["name"] for o in only_probabilities.get_response()["outputs"]] == ["probabilities"]
    assert only_probabilities.as_numpy("label") is None
    only_labels = infer(client, x[:3], outputs=[triton.InferRequestedOutput("label", binary_data=False)])
    assert [o["name"] for o in only_labels.get_response()["outputs"]] == ["label"]
    assert only_labels.as_numpy("label").shape == (3,)


def test_unknown_model_through_the_client_raises(client, dataset):
    x, _ = dataset
    tensor = triton.InferInput("input", [1, 30], "FP32")
    tensor.set_data_from_numpy(x[:1].astype(np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("other-model", [tensor])
    assert "not served here" in str(info.value)


def test_version_path_and_nested_json_data(server, dataset):
    x, _ = dataset
    body = {"id": "n", "inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP64", "data": x[:2].tolist()}]}
    resp = requests.post(server.url + f"/v2/models/{MODEL}/versions/1/infer", json=body)
    assert resp.status_code == 200, resp.text
    out = {o["name"]: o for o in resp.json()["outputs"]}
    assert out["label"] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 0]}
    assert out["probabilities"]["shape"] == [2, 2] and len(out["probabilities"]["data"]) == 4


def test_int_datatypes_are_converted(server):
    body = {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "INT64", "data": list(range(30))}],
        "parameters": {"x": 1},
    }
    assert requests.post(server.url + f"/v2/models/{MODEL}/infer", json=body).status_code == 200


def v2_error(resp) -> str:
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def tensor(shape, data, datatype="FP32", name="input"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


INT64_RANGE = "INT64 data must be integers from -9223372036854775808 to 9223372036854775807"


@pytest.mark.parametrize(
    "body, message",
    [
        # orjson reads an integer past 64 bits as a float: NumPy made -2^63-1 into -2^63
        (
            tensor([1, 30], [1] * 29 + [-(2**63) - 1], "INT64"),
            f"data[29] is number -9.223372036854776e+18; {INT64_RANGE}",
        ),
        (tensor([1, 30], [1] * 29 + [1.5], "INT64"), f"data[29] is number 1.5; {INT64_RANGE}"),
        (tensor([1, 30], [True] * 29 + [2], "BOOL"), "data[29] is number 2; BOOL data must be true or false"),
        (tensor([1, 30], [True] * 29 + ["true"], "BOOL"), 'data[29] is string "true"; BOOL data must be true or false'),
        (
            {**tensor([1, 30], [1.0] * 30), "parameters": {"binary_data_output": "yes"}},
            'request: parameter binary_data_output must be true or false, got "yes"',
        ),
        (
            {**tensor([1, 30], [1.0] * 30), "parameters": {"binary_data_output": 2}},
            "request: parameter binary_data_output must be true or false, got 2",
        ),
        (
            {**tensor([1, 30], [1.0] * 30), "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
            "outputs[0] (label): parameter binary_data must be true or false, got 1",
        ),
    ],
)
def test_v2_values_must_be_of_their_type(server, body, message):
    resp = requests.post(server.url + f"/v2/models/{MODEL}/infer", data=json.dumps(body))
    assert resp.status_code == 400, resp.text
    assert v2_error(resp) == "inputs[0] (input): " + message if message.startswith("data") else message


def test_v2_values_at_the_edges_of_their_type_are_exact(server):
    for datatype, data in (
        ("INT64", [-(2**63), 2**63 - 1] + [0] * 28),
        ("UINT64", [2**64 - 1, 2**63] + [1] * 28),
        ("BOOL", [True, False] * 15),
        ("INT8", [[-128, 127] * 15]),
    ):
        body = {**tensor([1, 30], data, datatype), "parameters": {"binary_data_output": False}}
        resp = requests.post(server.url + f"/v2/models/{MODEL}/infer", json=body)
        assert resp.status_code == 200, (datatype, resp.text)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (tensor([2, 30], [1.0] * 59), 400, "shape [2, 30] needs 60 values, data has 59"),
        (tensor([1, 29], [1.0] * 29), 400, "shape must be [N, 30], got [1, 29]"),
        (tensor([30], [1.0] * 30), 400, "shape must be [N, 30], got [30]"),
        (tensor([1, 30], ["a"] * 30), 400, 'data[0] is string "a"; FP32 data must be numbers'),
        (tensor([1, 30], [1.0] * 3 + ["1.5"] * 27), 400, 'data[3] is string "1.5"; FP32 data must be numbers'),
        (tensor([1, 30], [[1.0] * 29 + ["1.5"]]), 400, 'data[29] is string "1.5"; FP32 data must be numbers'),
        (tensor([1, 30], [1.0, {"a": 1}] * 15, "FP64"), 400, 'data[1] is object {"a":1}; FP64 data must be numbers'),
        (tensor([1, 30], [1.0] * 29 + [None]), 400, "data[29] is null; FP32 data must be numbers"),
        (tensor([1, 30], [1.0] * 30, "BYTES"), 400, 'datatype "BYTES" is not supported'),
        (tensor([1, 30], [1.0] * 30, "FP99"), 400, 'datatype "FP99" is not supported'),
        (tensor([1, 30], [1.0] * 30, name="x"), 400, 'unknown input "x"'),
        (tensor([1, 30], [None] * 30), 400, "data[0] is null; FP32 data must be numbers"),
        # past float32's range: named by value, as /predict names it, not as the inf it becomes
        (tensor([1, 30], [1.0] * 3 + [1e300] * 27), 400, "(input)[0][3] (mean area): 1e+300 is out of float32 range"),
        (tensor([1, 30], [[1.0] * 29 + [-1e300]], "FP64"), 400, "[0][29] (worst fractal dimension): -1e+300 is out of"),
        (tensor([1, 30], [1.0] * 29 + [70000.0], "FP16"), 400, "data[29] is 70000.0, out of FP16 range"),
        (tensor([1, -30], [1.0] * 30), 400, "shape must be a list of non-negative integers"),
        ({"inputs": []}, 400, "this model takes one tensor"),
        ({"input": 1}, 400, "expected a JSON object with an 'inputs' list"),
        ({**tensor([1, 30], [1.0] * 30), "outputs": [{"name": "nope"}]}, 400, 'unknown output "nope"'),
        ({**tensor([1, 30], [1.0] * 30), "outputs": [{"name": ["label"]}]}, 400, 'unknown output ["label"]'),
        ({**tensor([1, 30], [1.0] * 30, ["FP32"])}, 400, 'datatype ["FP32"] is not supported'),
        ({**tensor([1, 30], [1.0] * 30), "parameters": []}, 400, "request: parameters must be an object, got []"),
        ({**tensor([1, 30], [1.0] * 30), "parameters": "x"}, 400, 'request: parameters must be an object, got "x"'),
        (
            {"inputs": [{**tensor([1, 30], [1.0] * 30)["inputs"][0], "parameters": [1]}]},
            400,
            "inputs[0] (input): parameters must be an object, got [1]",
        ),
        (
            {**tensor([1, 30], [1.0] * 30), "outputs": [{"name": "label", "parameters": 5}]},
            400,
            "outputs[0] (label): parameters must be an object, got 5",
        ),
        (
            tensor([1, 30], [1001] * 30, "UINT8"),
            400,
            "data[0] is number 1001; UINT8 data must be integers from 0 to 255",
        ),
        (tensor([1, 30], [-200] * 30, "INT8"), 400, "data[0] is number -200; INT8 data must be integers from -128 to"),
        (tensor([1, 30], [-1] * 30, "UINT64"), 400, "data[0] is number -1; UINT64 data must be integers from 0 to"),
        (tensor([1, 30], [1] * 29 + [2**70], "INT64"), 400, "data[29] is number 1.1805916207174113e+21; INT64 data"),
        ({**tensor([1, 30], [1.0] * 30), "id": {"a": 1}}, 400, 'id: expected a string, got {"a":1}'),
        ({**tensor([1, 30], [1.0] * 30), "id": DEEP}, 400, "id: expected a string, got array nested too deeply"),
    ],
)
def test_bad_tensors_are_400_in_the_protocol_shape(server, body, status, message):
    resp = requests.post(server.url + f"/v2/models/{MODEL}/infer", data=json.dumps(body))
    assert resp.status_code == status, resp.text
    assert message in v2_error(resp)


def test_nan_in_binary_tensor_is_400(server):
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": 120}}]}
    ).encode()
    raw = np.full((1, 30), np.nan, dtype="<f4").tobytes()
    resp = requests.post(
        server.url + f"/v2/models/{MODEL}/infer",
        data=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert resp.status_code == 400
    assert "nan is not a finite number" in v2_error(resp)


@pytest.mark.parametrize(
    "length, extra, message",
    [
        ("abc", b"", "expected a byte count"),
        ("100000", b"", "does not fit a body"),
        (None, b"\x00" * 8, "does not match the 8 bytes"),
    ],
)
def test_bad_binary_framing_is_400(server, length, extra, message):
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": 120}}]}
    ).encode()
    resp = requests.post(
        server.url + f"/v2/models/{MODEL}/infer",
        data=header + extra,
        headers={"Inference-Header-Content-Length": length or str(len(header))},
    )
    assert resp.status_code == 400
    assert message in v2_error(resp)


def test_unknown_model_and_version_are_404(server):
    body = tensor([1, 30], [1.0] * 30)
    for path in ("/v2/models/other/infer", f"/v2/models/{MODEL}/versions/9/infer"):
        resp = requests.post(server.url + path, json=body)
        assert resp.status_code == 404
        assert v2_error(resp)
    assert requests.get(server.url + f"/v2/models/{MODEL}/versions/9").status_code == 404
    assert requests.get(server.url + "/v2/models/other/ready").status_code == 404


def test_malformed_json_and_wrong_content_type(server):
    resp = requests.post(server.url + f"/v2/models/{MODEL}/infer", data=b'{"inputs": [')
    assert resp.status_code == 400 and "not valid JSON" in v2_error(resp)
    resp = requests.post(server.url + f"/v2/models/{MODEL}/infer", data=b"x", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415


def test_too_large_is_413(start_server):
    srv = start_server({"MAX_REQUEST_BYTES": "1000", "MAX_ROWS": "2"})
    resp = requests.post(srv.url + f"/v2/models/{MODEL}/infer", json=tensor([40, 30], [1.0] * 1200))
    assert resp.status_code == 413 and "MAX_REQUEST_BYTES" in v2_error(resp)
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP32", "parameters": {"binary_data_size": 360}}]}
    ).encode()
    resp = requests.post(
        srv.url + f"/v2/models/{MODEL}/infer",
        data=header + np.ones((3, 30), "<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert resp.status_code == 413 and "MAX_ROWS=2" in v2_error(resp)


def test_not_ready_is_503(start_server, tmp_path):
    srv = start_server({"MODEL_PATH": str(tmp_path / "none.onnx")}, ready=False)
    assert requests.get(srv.url + "/v2/health/live").status_code == 200
    resp = requests.get(srv.url + "/v2/health/ready")
    assert resp.status_code == 503 and "failed to load" in v2_error(resp) or "loading" in v2_error(resp)
    resp = requests.post(srv.url + f"/v2/models/{MODEL}/infer", json=tensor([1, 30], [1.0] * 30))
    assert resp.status_code == 503


def test_openapi_lists_the_v2_routes(server):
    paths = requests.get(server.url + "/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/models/{name}/infer",
    ):
        assert path in paths, path
