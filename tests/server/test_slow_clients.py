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


# The same server with the default READ_TIMEOUT: what a stalled client holds, it holds for 30 s.
@pytest.fixture
def patient_srv(start_server):
    return start_server({**SMALL, "READ_TIMEOUT": "30"})


JSON_HEAD = "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("clients", "partial"),
    [
        # a full head and 64 KiB + 1 of a 100 KiB body, then nothing
        (8, (JSON_HEAD + "Content-Length: 102400\r\n\r\n").encode() + b" " * (64 * 1024 + 1)),
        # waits for "100 Continue", gets it, and sends nothing
        (16, (JSON_HEAD + "Expect: 100-continue\r\nContent-Length: 100\r\n\r\n").encode()),
        # a chunked body that never ends, its first chunk past 64 KiB
        (16, (JSON_HEAD + f"Transfer-Encoding: chunked\r\n\r\n{70_000:x}\r\n").encode() + b" " * 66_000),
    ],
    ids=["large-body", "expect-continue", "chunked-body"],
)
def test_unfinished_bodies_of_any_size_stall_nobody(patient_srv, sockets, card, clients, partial):
    for _ in range(clients):
        connect(patient_srv, sockets, partial)
    time.sleep(0.3)
    predict_quickly(patient_srv, card)


def test_expect_100_continue_gets_continue_then_its_answer(patient_srv, sockets, card):
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    body = json.dumps({"features": row}).encode()
    s = connect(
        patient_srv,
        sockets,
        (JSON_HEAD + f"Expect: 100-continue\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode(),
    )
    assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body)
    head, answer = response_of(s)
    assert head.startswith("HTTP/1.1 200"), head
    assert "100 Continue" not in head
    assert "predictions" in json.loads(answer)


def test_an_aborted_chunked_upload_is_no_server_error(patient_srv, sockets):
    """A client that goes away half-way through its body has made no request: nothing is
    counted as a 5xx (the canary analysis reads that series) and nothing is logged as a
    server error."""
    head = (JSON_HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode()
    for body in (b"5\r\n[1, 2\r\n", b"%x\r\n" % 100_000 + b" " * 80_000):
        s = connect(patient_srv, sockets, head + body)
        time.sleep(0.2)
        s.close()
    time.sleep(0.5)
    metrics = requests.get(patient_srv.url + "/metrics", timeout=5).text
    server_errors = [
        line for line in metrics.splitlines() if line.startswith("warmstart_requests_total") and 'status="5xx"' in line
    ]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in server_errors), server_errors
    log = patient_srv.log()
    assert "Traceback" not in log and "NoMoreData" not in log, log[-3000:]


@pytest.mark.parametrize("padding", [0, 200_000], ids=["small-body", "large-body"])
def test_pipelined_requests_are_answered_in_order(srv, sockets, card, padding):
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    body = json.dumps({"features": row}).encode() + b" " * padding
    first = f"{JSON_HEAD}Content-Length: {len(body)}\r\n\r\n"
    second = "GET /health/liveness HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    s = connect(srv, sockets, first.encode() + body + second.encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2, data[:2000]
    assert data.index(b"predictions") < data.rindex(b"HTTP/1.1 200 OK")


def test_large_bodies_past_what_a_worker_buffers_wait_their_turn_and_are_answered(start_server, card):
    """A worker buffers THREADS x MAX_REQUEST_BYTES of bodies: here 200 KB, against eight
    150 KB bodies at once. Those past it wait unread, and are read when others are done."""
    srv = start_server({"WORKERS": "1", "THREADS": "1", "MAX_REQUEST_BYTES": "200000"})
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    body = json.dumps({"features": row}) + " " * 150_000
    statuses: list[int] = []

    def post() -> None:
        resp = requests.post(srv.url + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30)
        statuses.append(resp.status_code)

    senders = [threading.Thread(target=post) for _ in range(8)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    assert statuses == [200] * 8
