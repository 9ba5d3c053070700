"""Each limit at its edge: at the limit a request is read, one past it is refused with a
message naming the limit. (Rows: tests/api/test_errors.py::test_too_many_rows_is_413.)"""

from __future__ import annotations

import json
import socket

import pytest
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


def exchange(srv, request: bytes) -> tuple[str, bytes]:
    """Send `request` on a fresh connection and read until the server closes it: the
    status line and headers, and the body. READ_TIMEOUT is 30 s, so an answer within the
    socket's 10 s means the server did not wait for a body it will never get."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


POST = "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("expect", ["", "Expect: 100-continue\r\n"], ids=["plain", "expect-continue"])
def test_a_content_length_past_max_request_bytes_is_413_before_the_body(start_server, card, expect):
    srv = start_server({"MAX_REQUEST_BYTES": str(LIMIT)})
    head, body = exchange(srv, f"{POST}{expect}Content-Length: {LIMIT + 1}\r\n\r\n".encode())
    assert head.startswith("HTTP/1.1 413"), head  # not "100 Continue", not 408 after READ_TIMEOUT
    assert f"X-Model-Name: {card['name']}" in head and "Connection: close" in head
    assert json.loads(body)["error"] == {
        "code": "payload_too_large",
        "message": f"request body is larger than MAX_REQUEST_BYTES={LIMIT} bytes",
    }


def test_a_chunked_body_past_max_request_bytes_is_413_before_its_end(start_server):
    srv = start_server({"MAX_REQUEST_BYTES": str(LIMIT)})
    chunk = b"%x\r\n%s\r\n" % (LIMIT // 2, b" " * (LIMIT // 2))
    head, body = exchange(srv, f"{POST}Transfer-Encoding: chunked\r\n\r\n".encode() + chunk * 2 + b"1\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert f"MAX_REQUEST_BYTES={LIMIT}" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked"])
def test_a_transfer_coding_other_than_chunked_is_501(server, coding):
    head, body = exchange(server, f"{POST}Transfer-Encoding: {coding}\r\n\r\n".encode() + b"5\r\n[1, 2\r\n")
    assert head.startswith("HTTP/1.1 501"), head
    assert json.loads(body)["error"] == {
        "code": "not_implemented",
        "message": f"Transfer-Encoding {coding!r} is not supported: send the body as is or chunked",
    }


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health/liveness HTTP/1.1\nHost: t\n\n",
        b"GET /health/liveness HTTP/1.1\r\nHost: t\n\n",
        b"GET /health/liveness HTTP/1.1\r\nHost: t\r\n\n",
    ],
    ids=["all-bare", "mixed", "last-line"],
)
def test_bare_lf_line_endings_are_400_at_once(server, request_bytes):
    head, body = exchange(server, request_bytes)
    assert head.startswith("HTTP/1.1 400"), head
    assert json.loads(body)["error"] == {
        "code": "malformed_request",
        "message": "a request line or header ends with a bare LF; end every line with CRLF",
    }


def test_chunk_framing_cannot_make_a_body_past_max_request_bytes_fill_memory(start_server):
    """One byte of data per chunk, each with a long chunk extension: the data stays
    under the limit, the body as sent does not."""
    srv = start_server({"MAX_REQUEST_BYTES": str(LIMIT)})
    chunk = b"1;ext=" + b"x" * 1000 + b"\r\n \r\n"
    head, body = exchange(srv, f"{POST}Transfer-Encoding: chunked\r\n\r\n".encode() + chunk * 80)
    assert head.startswith("HTTP/1.1 413"), head
    assert f"MAX_REQUEST_BYTES={LIMIT}" in json.loads(body)["error"]["message"]
