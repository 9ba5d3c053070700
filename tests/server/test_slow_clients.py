"""A few slow, silent or never-finishing clients do not take the service down: requests
are read before they take one of the few worker threads, and each has READ_TIMEOUT
seconds to arrive."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

# One worker with two threads: two stalled clients would already hold every thread.
SMALL = {"WORKERS": "1", "THREADS": "2", "READ_TIMEOUT": "2"}


@pytest.fixture
def srv(start_server):
    return start_server(SMALL)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def connect(srv, opened: list[socket.socket], first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    opened.append(s)
    if first:
        s.sendall(first)
    return s


def predict_quickly(srv, card) -> None:
    """Five predictions on fresh connections, each answered within a second."""
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    for _ in range(5):
        resp = requests.post(srv.url + "/predict", json={"features": row}, timeout=1)
        assert resp.status_code == 200


def test_clients_that_send_half_a_header_stall_nobody(srv, sockets, card):
    for _ in range(8):
        connect(srv, sockets, b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: app")
    time.sleep(0.3)
    predict_quickly(srv, card)


def test_silent_connections_stall_nobody(srv, sockets, card):
    for _ in range(200):
        connect(srv, sockets)
    time.sleep(0.3)
    predict_quickly(srv, card)


def test_clients_that_keep_their_end_open_after_a_closing_response_stall_nobody(srv, sockets, card):
    """A response that closes its connection is followed by a linger (the server reads
    what the client still sends before closing); clients that never close their end must
    not hold the event loop meanwhile."""
    for _ in range(8):
        s = connect(srv, sockets, b"GET /health/liveness HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    predict_quickly(srv, card)


def test_slow_uploads_stall_nobody(srv, sockets, card):
    body = json.dumps({"features": [0.0] * 30}).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    slow = [connect(srv, sockets, head.encode()) for _ in range(7)]
    stop = threading.Event()

    def trickle() -> None:  # one byte per connection every 0.2 s
        for i in range(len(body)):
            if stop.wait(0.2):
                return
            for s in slow:
                try:
                    s.sendall(body[i : i + 1])
                except OSError:
                    return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)
        predict_quickly(srv, card)
    finally:
        stop.set()
        sender.join()


def test_endless_chunked_bodies_stall_nobody(srv, sockets, card):
    head = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for _ in range(8):
        connect(srv, sockets, head + b"1\r\n[\r\n")
    time.sleep(0.3)
    predict_quickly(srv, card)


def test_a_chunked_body_sent_in_pieces_with_trailers_is_answered(srv, sockets, card):
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    body = json.dumps({"features": row}).encode()
    s = connect(
        srv,
        sockets,
        b"POST /predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    )
    for piece in (
        b"a\r\n" + body[:10] + b"\r\n",
        b"%x\r\n" % len(body[10:]) + body[10:] + b"\r\n",
        b"0\r\nX-Checksum: 1\r\n",
        b"\r\n",
    ):
        time.sleep(0.1)
        s.sendall(piece)
    head, answer = response_of(s)
    assert head.startswith("HTTP/1.1 200"), head
    assert "predictions" in json.loads(answer)


def response_of(s: socket.socket) -> tuple[str, bytes]:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


@pytest.mark.parametrize(
    "partial",
    [
        b"POST /predict HTTP/1.1\r\nHost: t\r\n",
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n[1, 2\r\n",
        # a body larger than what is read before a thread takes it
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        + b" " * 200_000,
    ],
    ids=["header", "body", "chunked-body", "large-body"],
)
def test_a_request_that_never_completes_gets_408_after_read_timeout(srv, sockets, partial, card):
    s = connect(srv, sockets, partial)
    started = time.monotonic()
    head, body = response_of(s)  # the server closes the connection after answering
    waited = time.monotonic() - started
    assert head.startswith("HTTP/1.1 408"), head
    assert f"X-Model-Name: {card['name']}" in head and "Connection: close" in head
    assert json.loads(body)["error"] == {
        "code": "request_timeout",
        "message": "the request was not received within READ_TIMEOUT=2 s",
    }
    assert 1.5 < waited < 5
