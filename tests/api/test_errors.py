"""Bad input gets a clear 4xx naming what was wrong and where, never a 5xx."""

from __future__ import annotations

import pytest
import requests

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def row(card) -> list[float]:
    return [card["reference"][n]["mean"] for n in card["feature_names"]]


def post(server, body: bytes | str, path: str = "/predict", headers: dict[str, str] | None = None):
    data = body.encode() if isinstance(body, str) else body
    return requests.post(server.url + path, data=data, headers=headers if headers is not None else JSON)


def error_of(resp) -> dict:
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


@pytest.mark.parametrize(
    "body, where",
    [
        ('{"instances": [[1, 2', "not valid JSON"),
        ("{'instances': []}", "not valid JSON"),
        ("", "empty"),
        ("instances=1", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_malformed_json_is_400(server, body, where):
    resp = post(server, body)
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["code"] == "malformed_request"
    assert where in err["message"]


def test_short_and_long_rows_name_the_row(server, row):
    resp = post(server, f'{{"instances": [{row}, {row[:-1]}]}}')
    assert resp.status_code == 422
    assert error_of(resp)["message"] == "instances[1]: expected 30 features, got 29"
    resp = post(server, f'{{"instances": [{row + [1.0]}]}}')
    assert resp.status_code == 422
    assert "expected 30 features per row, got 31" in error_of(resp)["message"]
    resp = post(server, '{"features": [1, 2, 3]}')
    assert resp.status_code == 422
    assert error_of(resp)["message"] == "features: expected 30 features, got 3"


@pytest.mark.parametrize(
    "value, shown",
    [('"abc"', 'string "abc"'), ('"1.5"', 'string "1.5"'), ("[1]", "array [1]"), ("{}", "object {}")],
)
def test_non_number_values_name_row_and_column(server, row, value, shown):
    bad = [str(v) for v in row]
    bad[4] = value
    body = '{"instances": [' + str(row) + ", [" + ",".join(bad) + "]]}"
    resp = post(server, body)
    assert resp.status_code == 422, resp.text
    msg = error_of(resp)["message"]
    assert msg.startswith("instances[1][4] (mean smoothness): expected a number, got " + shown), msg


@pytest.mark.parametrize("literal", ["null", "NaN", "Infinity", "-Infinity", "1e39"])
def test_null_nan_infinity_are_422_with_position(server, row, literal):
    bad = [str(v) for v in row]
    bad[2] = literal
    for body, position in (
        ('{"instances": [[' + ",".join(bad) + "]]}", "instances[0][2] (mean perimeter): "),
        ('{"features": [' + ",".join(bad) + "]}", "features[2] (mean perimeter): "),
    ):
        resp = post(server, body)
        assert resp.status_code == 422, resp.text
        msg = error_of(resp)["message"]
        assert msg.startswith(position), msg


def test_booleans_count_as_one_and_zero(server, row):
    flags = list(row)
    flags[4], flags[5] = True, False
    numbers = list(row)
    numbers[4], numbers[5] = 1, 0
    as_bool = requests.post(server.url + "/predict", json={"instances": [flags]})
    assert as_bool.status_code == 200, as_bool.text
    assert as_bool.json() == requests.post(server.url + "/predict", json={"instances": [numbers]}).json()
    assert requests.post(server.url + "/predict", json={"features": flags}).status_code == 200


def test_unknown_and_missing_feature_names_are_422(server, card, row):
    named = dict(zip(card["feature_names"], row))
    extra = {**named, "mean radiance": 1.0}
    resp = requests.post(server.url + "/predict", json={"instances": [named, extra]})
    assert resp.status_code == 422
    assert error_of(resp)["message"].startswith("instances[1]: unknown feature name(s) 'mean radiance'")
    missing = dict(named)
    del missing["worst area"]
    resp = requests.post(server.url + "/predict", json={"instances": [missing]})
    assert resp.status_code == 422
    assert error_of(resp)["message"] == "instances[0]: missing feature(s) 'worst area'"
    resp = requests.post(server.url + "/predict", json={"instances": [named, list(row)]})
    assert resp.status_code == 422
    assert "instances[1]: expected an object like row 0, got array" in error_of(resp)["message"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("[1, 2]", "expected a JSON object with 'instances' or 'features', got array"),
        ('{"rows": []}', "expected a field 'instances'"),
        ('{"instances": []}', "instances: expected at least one row, got an empty list"),
        ('{"instances": 5}', "instances: expected a list of rows, got number"),
        ('{"instances": [5]}', "instances[0]: expected a row of 30 numbers, got number"),
        ('{"features": "1,2,3"}', "features: expected a list of 30 numbers, got string"),
    ],
)
def test_wrong_shapes_are_422(server, body, message):
    resp = post(server, body)
    assert resp.status_code == 422
    assert message in error_of(resp)["message"]


def test_too_many_rows_is_413(start_server, row):
    srv = start_server({"MAX_ROWS": "3"})
    resp = requests.post(srv.url + "/predict", json={"instances": [row] * 4})
    assert resp.status_code == 413
    assert error_of(resp)["message"] == "instances: 4 rows is more than MAX_ROWS=3"
    assert requests.post(srv.url + "/predict", json={"instances": [row] * 3}).status_code == 200


def test_too_large_body_is_413(start_server, row):
    srv = start_server({"MAX_REQUEST_BYTES": "2000"})
    resp = requests.post(srv.url + "/predict", json={"instances": [row] * 10})
    assert resp.status_code == 413
    assert "MAX_REQUEST_BYTES=2000" in error_of(resp)["message"]

    def chunks():
        yield b'{"instances": ['
        for _ in range(10):
            yield (str(row) + ",").encode()
        yield (str(row) + "]}").encode()

    resp = requests.post(srv.url + "/predict", data=chunks(), headers=JSON)
    assert resp.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv"])
def test_non_json_content_type_is_415(server, row, content_type):
    resp = post(server, f'{{"features": {row}}}', headers={"Content-Type": content_type})
    assert resp.status_code == 415
    assert content_type in error_of(resp)["message"]


def test_unknown_model_name_is_404(server, row):
    resp = requests.post(server.url + "/v1/models/other:predict", json={"instances": [row]})
    assert resp.status_code == 404
    assert error_of(resp)["message"] == "model 'other' is not served here; this server serves 'breast-cancer-rf'"
    assert requests.get(server.url + "/v1/models/other").status_code == 404


def test_unknown_route_and_wrong_method_are_json(server):
    resp = requests.get(server.url + "/predictions")
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"
    resp = requests.get(server.url + "/predict")
    assert resp.status_code == 405 and error_of(resp)["code"] == "method_not_allowed"


def test_server_keeps_serving_after_bad_requests(server, row):
    for body in ("{", '{"instances": [[null]]}', "[]"):
        post(server, body)
    assert requests.post(server.url + "/predict", json={"features": row}).status_code == 200


DEEP = "[" * 1100 + "]" * 1100  # past orjson's 1,024 levels: the fallback parser would recurse
NESTED = "[" * 900 + "]" * 900  # parses, but too deep for Python to repr in a message
ONE_NESTED = ",".join(["1"] * 29 + [NESTED])  # a row whose last value is NESTED
CE = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/t", "ce-type": "warmstart.predict.v1", **JSON}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
ENVELOPE = '{"specversion": "1.0", "id": "1", "source": "/t", "type": "warmstart.predict.v1", "data": @}'


@pytest.mark.parametrize(
    "path, headers, template",
    [
        ("/predict", JSON, "@"),
        ("/", JSON, "@"),
        ("/v1/models/breast-cancer-rf:predict", JSON, "@"),
        ("/v2/models/breast-cancer-rf/infer", JSON, "@"),
        ("/", CE, "@"),
        ("/", STRUCTURED, "@"),
        ("/", STRUCTURED, ENVELOPE),
    ],
    ids=["predict", "root", "v1", "v2", "ce-binary", "ce-structured", "ce-structured-data"],
)
def test_json_nested_past_the_parser_limit_is_400(server, path, headers, template):
    resp = post(server, template.replace("@", DEEP), path, headers)
    assert resp.status_code == 400, resp.text
    assert "not valid JSON" in resp.text


@pytest.mark.parametrize(
    "path, body",
    [
        ("/predict", '{"features": [' + ONE_NESTED + "]}"),
        ("/v1/models/breast-cancer-rf:predict", '{"instances": [[' + ONE_NESTED + "]]}"),
        ("/v2/models/breast-cancer-rf/infer", '{"inputs": [{"name": @}]}'.replace("@", NESTED)),
        ("/v2/models/breast-cancer-rf/infer", '{"inputs": [{"name": "input", "datatype": @}]}'.replace("@", NESTED)),
        (
            "/v2/models/breast-cancer-rf/infer",
            '{"inputs": [{"name": "input", "datatype": "FP32", "shape": @}]}'.replace("@", NESTED),
        ),
    ],
    ids=["features-value", "instances-value", "v2-name", "v2-datatype", "v2-shape"],
)
def test_deeply_nested_values_are_quoted_in_a_4xx(server, path, body):
    resp = post(server, body, path)
    assert resp.status_code in (400, 422), resp.text
    assert "nested too deeply to show" in resp.text


HUGE = "1" + "0" * 400  # an integer literal past a float64's range (2^1024 and more)
ROW_OF_HUGE = ",".join(["1"] * 29 + [HUGE])
V2_HUGE = '{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "@", "data": [' + ROW_OF_HUGE + "]}]}"


@pytest.mark.parametrize(
    "path, headers, body, where",
    [
        ("/predict", JSON, '{"instances": [[' + ROW_OF_HUGE + "]]}", "instances[0][29]"),
        ("/predict", JSON, '{"features": [' + ROW_OF_HUGE + "]}", "features[29]"),
        ("/predict", JSON, '{"instances": [[' + ",".join(["1"] * 30) + "]], " + '"tag": ' + HUGE + "}", "tag"),
        ("/", JSON, '{"features": [' + ROW_OF_HUGE + "]}", "features[29]"),
        ("/explain", JSON, '{"instances": [[' + ROW_OF_HUGE + "]]}", "instances[0][29]"),
        ("/v1/models/breast-cancer-rf:predict", JSON, '{"instances": [[' + ROW_OF_HUGE + "]]}", "instances[0][29]"),
        ("/v1/models/breast-cancer-rf:explain", JSON, '{"instances": [[' + ROW_OF_HUGE + "]]}", "instances[0][29]"),
        ("/", CE, '{"features": [' + ROW_OF_HUGE + "]}", "features[29]"),
        ("/", STRUCTURED, ENVELOPE.replace("@", '{"features": [' + ROW_OF_HUGE + "]}"), "data.features[29]"),
        ("/v2/models/breast-cancer-rf/infer", JSON, V2_HUGE.replace("@", "FP16"), "inputs[0].data[29]"),
        ("/v2/models/breast-cancer-rf/infer", JSON, V2_HUGE.replace("@", "FP32"), "inputs[0].data[29]"),
        ("/v2/models/breast-cancer-rf/infer", JSON, V2_HUGE.replace("@", "FP64"), "inputs[0].data[29]"),
        ("/v2/models/breast-cancer-rf/infer", JSON, V2_HUGE.replace("@", "INT64"), "inputs[0].data[29]"),
    ],
)
def test_an_integer_past_the_float64_range_is_a_4xx_naming_where(server, path, headers, body, where):
    resp = post(server, body, path, headers)
    assert resp.status_code == (400 if path.startswith("/v2/") else 422), resp.text
    message = resp.json()["error"] if path.startswith("/v2/") else error_of(resp)["message"]
    assert message == (
        f"{where}: the integer 100000000000... (401 digits) is too large for a number; the largest is about 1.8e308"
    )
    negative = post(server, body.replace(HUGE, "-" + HUGE), path, headers)
    assert negative.status_code == resp.status_code and "the integer -100000000000..." in negative.text


@pytest.mark.parametrize(
    "path, headers, body, where",
    [
        (
            "/v2/models/breast-cancer-rf/infer",
            JSON,
            V2_HUGE.replace("@", "FP32").replace(HUGE, "1")[:-1] + ', "id": "r-\\ud800"}',
            "id",
        ),
        ("/", {**CE, "ce-type": "warmstart.batch.v1"}, '{"input": "data/in\\udc00.csv", "output": "o.csv"}', "input"),
        ("/predict", JSON, '{"instances": [{"mean radius\\ud800": 1}]}', "instances[0]"),
    ],
    ids=["v2-id", "batch-uri", "feature-name"],
)
def test_a_lone_surrogate_is_400_naming_where(server, path, headers, body, where):
    resp = post(server, body, path, headers)
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"] if path.startswith("/v2/") else error_of(resp)["message"]
    assert message.startswith(f"{where}: the ")
    assert "holds a lone UTF-16 surrogate, which is not a character" in message


def test_a_surrogate_encoded_in_utf8_bytes_is_400(server):
    # json.loads reads these bytes as a lone surrogate, which no answer could echo back
    body = b'{"id": "r-\xed\xa0\x80", "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [NaN'
    body += b"".join([b", 1"] * 29) + b"]}]}"
    resp = post(server, body, "/v2/models/breast-cancer-rf/infer")
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith("request body is not valid JSON: ")
