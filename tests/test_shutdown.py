"""SIGTERM: readiness turns 503, the request in flight finishes, the process exits 0."""

from __future__ import annotations

import http.client
import json
import socket
import time


def test_sigterm_finishes_the_request_in_flight_and_exits_zero(start_server, card):
    srv = start_server()
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    body = json.dumps({"instances": [row] * 200}).encode()

    kept_alive = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    kept_alive.request("GET", "/health/readiness")
    ready = kept_alive.getresponse()
    assert ready.status == 200
    ready.read()

    # a request whose body is still arriving when SIGTERM comes
    slow = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow.sendall(head + body[: len(body) // 2])
    time.sleep(0.5)
    srv.proc.send_signal(15)
    time.sleep(0.3)

    kept_alive.request("GET", "/health/readiness")
    draining = kept_alive.getresponse()
    assert draining.status == 503
    assert json.loads(draining.read())["error"]["message"].startswith("the server is shutting down")

    slow.sendall(body[len(body) // 2 :])
    response = b""
    while b'"model"' not in response:
        chunk = slow.recv(65536)
        if not chunk:
            break
        response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert b'"predictions":[' in response
    assert srv.proc.wait(30) == 0
    assert "shutdown started" in srv.log()
