"""Each limit at its edge: at the limit a request is read, one past it is refused with a
message naming the limit. (Rows: tests/api/test_errors.py::test_too_many_rows_is_413.)"""

from __future__ import annotations

import json

import requests

JSON = {"Content-Type": "application/json"}
LIMIT = 4096


def test_a_body_of_max_request_bytes_is_read_and_one_byte_more_is_413(start_server, card):
    srv = start_server({"MAX_REQUEST_BYTES": str(LIMIT)})
    body = json.dumps({"features": [card["reference"][name]["mean"] for name in card["feature_names"]]})
    at_limit = body + " " * (LIMIT - len(body))  # trailing whitespace is valid JSON
    assert requests.post(srv.url + "/predict", data=at_limit, headers=JSON).status_code == 200
    past = requests.post(srv.url + "/predict", data=at_limit + " ", headers=JSON)
    assert past.status_code == 413
    assert f"MAX_REQUEST_BYTES={LIMIT}" in past.json()["error"]["message"]


def test_json_nested_1024_levels_is_read_and_1025_is_400_naming_the_depth(server):
    def nested(levels: int) -> str:  # `levels` counts the body's own object
        inner = levels - 1
        return '{"features": ' + "[" * inner + "1" + "]" * inner + "}"

    at_limit = requests.post(server.url + "/predict", data=nested(1024), headers=JSON)
    assert at_limit.status_code == 422, at_limit.text  # read: a row nested too deeply to be one
    past = requests.post(server.url + "/predict", data=nested(1025), headers=JSON)
    assert past.status_code == 400
    assert "depth limit exceeded" in past.json()["error"]["message"]


def test_a_header_of_8190_bytes_is_read_and_one_byte_more_is_refused(server):
    # gunicorn's limit_request_field_size counts the whole line, "Name: value\r\n"
    name = "X-Padding"
    at_limit = {name: "v" * (8190 - len(name) - len(": \r\n"))}
    assert requests.get(server.url + "/health/liveness", headers=at_limit).status_code == 200
    past = requests.get(server.url + "/health/liveness", headers={name: at_limit[name] + "v"})
    assert past.status_code == 431
