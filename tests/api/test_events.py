"""CloudEvents on POST /: predictions and replies in both content modes, and errors."""

from __future__ import annotations

import json

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

STRUCTURED_TYPE = "application/cloudevents+json"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def send(url: str, event: CloudEvent, structured: bool = False, headers: dict[str, str] | None = None):
    encode = to_structured if structured else to_binary
    ce_headers, body = encode(event)
    return requests.post(url + "/", data=body, headers={**ce_headers, **(headers or {})})


def predict_event(data, **attributes) -> CloudEvent:
    return CloudEvent({"type": "warmstart.predict.v1", "source": "/tests", **attributes}, data)


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_predict_event_reply_equals_predict_response(server, dataset, structured):
    x, _ = dataset
    body = {"instances": x[:8].tolist()}
    event = predict_event(body, id="req-1", subject="patients/42")
    resp = send(server.url, event, structured, headers={"traceparent": TRACEPARENT})
    assert resp.status_code == 200, resp.text
    if structured:
        assert resp.headers["Content-Type"].startswith("application/cloudevents+json")
    else:
        assert resp.headers["ce-specversion"] == "1.0"
    reply = from_http(resp.headers, resp.content)
    assert reply["type"] == "warmstart.prediction.v1"
    assert reply["source"].startswith("/warmstart/")
    assert reply["id"] != "req-1"
    assert reply["subject"] == "patients/42"
    assert reply["causationid"] == "req-1"
    assert resp.headers["traceparent"] == TRACEPARENT
    assert reply.data == requests.post(server.url + "/predict", json=body).json()


def test_reply_carries_traceparent_extension_and_our_source(start_server, dataset):
    x, _ = dataset
    srv = start_server({"CE_SOURCE": "/warmstart/cancer", "K_SERVICE": "cancer"})
    event = predict_event({"features": x[0].tolist()}, traceparent=TRACEPARENT)
    reply = from_http(*_headers_and_body(send(srv.url, event)))
    assert reply["source"] == "/warmstart/cancer"
    assert reply["traceparent"] == TRACEPARENT
    assert "subject" not in reply
    assert reply.data["probability"] == reply.data["probabilities"][0][1]


def _headers_and_body(resp):
    assert resp.status_code == 200, resp.text
    return resp.headers, resp.content


def test_plain_json_on_root_is_still_a_prediction(server, dataset):
    x, _ = dataset
    resp = requests.post(server.url + "/", json={"features": x[0].tolist()})
    assert resp.status_code == 200
    assert "ce-specversion" not in resp.headers


def error_of(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_unknown_event_type_is_400(server):
    resp = send(server.url, CloudEvent({"type": "com.example.other", "source": "/t"}, {"x": 1}))
    assert resp.status_code == 400
    assert "event type 'com.example.other' is not handled here" in error_of(resp)["message"]


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_invalid_predict_data_is_422_naming_the_field(server, structured):
    resp = send(server.url, predict_event({"instances": [[1.0, 2.0]]}), structured)
    assert resp.status_code == 422
    assert "expected 30 features per row, got 2" in error_of(resp)["message"]
    resp = send(server.url, predict_event({"instances": [[None] * 30]}), structured)
    assert resp.status_code == 422
    assert "instances[0][0] (mean radius): null is not a number" in error_of(resp)["message"]


def test_event_without_data_is_422(server):
    resp = send(server.url, predict_event(None))
    assert resp.status_code == 422


@pytest.mark.parametrize(
    "headers, body",
    [
        ({"ce-specversion": "1.0", "ce-type": "warmstart.predict.v1", "ce-source": "/t"}, b'{"features": [1]}'),
        ({"ce-specversion": "0.1", "ce-type": "warmstart.predict.v1", "ce-source": "/t", "ce-id": "1"}, b"{}"),
        ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", "type": "x"'),
        ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", "source": "/t", "id": "1"}'),
        (
            {
                "ce-specversion": "1.0",
                "ce-type": "warmstart.predict.v1",
                "ce-source": "/t",
                "ce-id": "1",
                "Content-Type": "application/json",
            },
            b'{"features": [1, 2',
        ),
    ],
    ids=["no-id", "bad-specversion", "truncated-structured", "structured-no-type", "truncated-data"],
)
def test_malformed_events_are_400(server, headers, body):
    resp = requests.post(server.url + "/", data=body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["code"] == "malformed_request"


def test_batched_content_mode_is_415(server):
    batch = [to_structured(predict_event({"features": [1.0] * 30}))[1].decode()]
    resp = requests.post(
        server.url + "/",
        data="[" + ",".join(batch) + "]",
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert resp.status_code == 415
    assert "one event per request" in error_of(resp)["message"]


def test_event_before_the_model_is_ready_is_503(start_server, tmp_path):
    srv = start_server({"MODEL_PATH": str(tmp_path / "missing.onnx")}, ready=False)
    resp = send(srv.url, predict_event({"features": [1.0] * 30}))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]


def test_structured_event_with_nan_data_is_422(server):
    envelope = {
        "specversion": "1.0",
        "type": "warmstart.predict.v1",
        "source": "/t",
        "id": "nan-1",
        "datacontenttype": "application/json",
        "data": {"features": [float("nan")] * 30},
    }
    resp = requests.post(
        server.url + "/", data=json.dumps(envelope), headers={"Content-Type": "application/cloudevents+json"}
    )
    assert resp.status_code == 422
    assert "features[0] (mean radius): nan is not a finite number" in error_of(resp)["message"]


BINARY = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "/t", "ce-type": "warmstart.predict.v1"}
ENVELOPE = {"specversion": "1.0", "id": "s-1", "source": "/t", "type": "warmstart.predict.v1"}


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("id", None),
        ("source", None),
        ("type", None),
        ("specversion", ["1.0"]),
        ("specversion", {"v": "1.0"}),
        ("id", {"a": 1}),
        ("id", ["a"]),
        ("id", True),
        ("id", ""),
        ("subject", {"a": 1}),
        ("time", 1.5),
    ],
)
def test_structured_event_with_a_wrong_attribute_is_400_naming_it(server, attribute, value):
    envelope = {**ENVELOPE, attribute: value, "data": {"features": [1.0] * 30}}
    resp = requests.post(server.url + "/", data=json.dumps(envelope), headers={"Content-Type": STRUCTURED_TYPE})
    assert resp.status_code == 400, resp.text
    assert f"attribute {attribute!r}" in error_of(resp)["message"]


@pytest.mark.parametrize(
    "headers, message",
    [
        ({"ce-id": ""}, "header 'ce-id' must be a non-empty string"),
        ({"ce-source": ""}, "header 'ce-source' must be a non-empty string"),
        ({"ce-id": None}, "header 'ce-id' is missing"),
        ({"ce-subject": b"\xff\xfe"}, "header 'ce-subject' is not UTF-8 text"),
    ],
    ids=["empty-id", "empty-source", "no-id", "latin-1-subject"],
)
def test_binary_event_with_a_wrong_header_is_400_naming_it(server, headers, message):
    resp = requests.post(server.url + "/", data=json.dumps({"features": [1.0] * 30}), headers={**BINARY, **headers})
    assert resp.status_code == 400, resp.text
    assert message in error_of(resp)["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "text/csv"])
def test_binary_event_whose_data_is_not_json_is_415(server, content_type):
    headers = {**BINARY, "Content-Type": content_type}
    resp = requests.post(server.url + "/", data=json.dumps({"features": [1.0] * 30}), headers=headers)
    assert resp.status_code == 415, resp.text
    assert content_type in error_of(resp)["message"]


@pytest.mark.parametrize("sent", ["café 日本".encode(), "caf%C3%A9%20%E6%97%A5%E6%9C%AC"], ids=["utf-8", "percent"])
def test_non_ascii_subject_is_read_as_utf8_and_echoed_percent_encoded(server, sent):
    headers = {**BINARY, "ce-subject": sent}
    resp = requests.post(server.url + "/", data=json.dumps({"features": [1.0] * 30}), headers=headers)
    assert resp.status_code == 200, resp.text
    # The HTTP binding percent-encodes what is not printable ASCII; the SDK reads it back.
    assert resp.headers["ce-subject"] == "caf%C3%A9%20%E6%97%A5%E6%9C%AC"
    envelope = {**ENVELOPE, "subject": "café 日本", "data": {"features": [1.0] * 30}}
    resp = requests.post(server.url + "/", data=json.dumps(envelope), headers={"Content-Type": STRUCTURED_TYPE})
    assert from_http(resp.headers, resp.content)["subject"] == "café 日本"


@pytest.mark.parametrize("empty_header", [False, True], ids=["no-header", "empty-traceparent-header"])
@pytest.mark.parametrize(
    "value", ["模型".encode(), b"garbage", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"]
)
def test_binary_event_with_a_bad_traceparent_extension_is_400_naming_it(server, value, empty_header):
    headers = {**BINARY, "ce-traceparent": value, **({"traceparent": ""} if empty_header else {})}
    resp = requests.post(server.url + "/", data=json.dumps({"features": [1.0] * 30}), headers=headers)
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["message"].startswith(
        "not a valid CloudEvent: header 'ce-traceparent' must be a W3C traceparent "
        "(00-<32 hex digits>-<16 hex digits>-<2 hex digits>), got "
    )
    envelope = {**ENVELOPE, "traceparent": value.decode(), "data": {"features": [1.0] * 30}}
    resp = requests.post(server.url + "/", data=json.dumps(envelope), headers={"Content-Type": STRUCTURED_TYPE})
    assert resp.status_code == 400, resp.text
    assert "attribute 'traceparent' must be a W3C traceparent" in error_of(resp)["message"]


@pytest.mark.parametrize("header", ["", "garbage", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"])
def test_an_invalid_traceparent_header_is_ignored_for_the_events_own(server, header):
    headers = {**BINARY, "ce-traceparent": TRACEPARENT, "traceparent": header}
    resp = requests.post(server.url + "/", data=json.dumps({"features": [1.0] * 30}), headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["traceparent"] == TRACEPARENT
    assert from_http(resp.headers, resp.content)["traceparent"] == TRACEPARENT
