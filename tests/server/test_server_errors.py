"""Errors the HTTP server finds before the application sees a request (a malformed or
oversized header, a broken chunked body) are JSON with the model headers like every other."""

from __future__ import annotations

import json
import socket

import pytest
import requests


def exchange(server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the response until the server closes; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (b"GET /health/liveness HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400, "malformed_request"),
        (b"GET /health/liveness HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health/liveness HTTP/9.9\r\nHost: t\r\n\r\n", 400, "malformed_request"),
        (
            b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
            "malformed_request",
        ),
    ],
    ids=["bad-header-name", "header-too-large", "uri-too-long", "http-version", "chunk-size"],
)
def test_protocol_errors_are_json_with_the_model_headers(server, card, raw, status, code):
    got, headers, body = exchange(server, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["x-model-name"] == card["name"] and headers["x-model-version"] == card["version"]
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]


def test_protocol_errors_carry_the_revision(start_server):
    srv = start_server({"K_REVISION": "cancer-00007"})
    _, headers, _ = exchange(srv, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n")
    assert headers["x-revision"] == "cancer-00007"


@pytest.mark.parametrize("method, path, allowed", [("POST", "/health/readiness", "GET"), ("GET", "/predict", "POST")])
def test_405_names_the_allowed_methods(server, method, path, allowed):
    resp = requests.request(method, server.url + path)
    assert resp.status_code == 405
    assert allowed in {m.strip() for m in resp.headers["Allow"].split(",")}
    assert resp.json()["error"]["code"] == "method_not_allowed"


def test_405_on_a_v2_route_names_the_allowed_methods(server, card):
    resp = requests.delete(f"{server.url}/v2/models/{card['name']}/infer")
    assert resp.status_code == 405
    assert "POST" in resp.headers["Allow"]


def test_protocol_errors_are_counted_in_the_metrics(start_server):
    srv = start_server({"K_REVISION": "cancer-00007"})
    for _ in range(3):
        exchange(srv, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n")
    text = requests.get(srv.url + "/metrics").text
    line = next(
        line for line in text.splitlines() if line.startswith("warmstart_requests_total{") and 'status="4xx"' in line
    )
    assert 'protocol="other"' in line and line.endswith(" 3.0"), line
