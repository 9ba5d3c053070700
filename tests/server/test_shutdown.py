"""SIGTERM: readiness turns 503, every request that reached the server is answered, the
process exits 0."""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.server import wait_for


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


def _request(port: int, raw: bytes) -> bytes:
    """Send one request on a new connection; the whole response, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data


def test_sigterm_under_load_answers_every_connection_that_reached_the_server(start_server, card):
    """16 clients on kept-alive connections, reconnecting when told `Connection: close`:
    requests in flight, on kept-alive connections, queued on a listening socket or sent
    just after SIGTERM are all answered (served, or 503 with Retry-After); none is reset."""
    srv = start_server({"WORKERS": "2"})
    row = [card["reference"][n]["mean"] for n in card["feature_names"]]
    body = json.dumps({"features": row})
    statuses: list[int] = []
    failures: list[str] = []

    def client() -> None:
        conn = None
        while True:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    return  # nothing listens any more: the request never reached the server
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except OSError as exc:
                failures.append(repr(exc))
                conn.close()
                conn = None
                continue
            statuses.append(resp.status)
            if resp.status not in (200, 503) or (resp.status == 503 and not resp.getheader("Retry-After")):
                failures.append(f"{resp.status} {resp.headers}")
            if resp.getheader("Connection") == "close":
                conn.close()
                conn = None

    clients = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    for thread in clients:
        thread.start()
    time.sleep(1)
    served_before = len(statuses)
    srv.proc.send_signal(signal.SIGTERM)
    for thread in clients:
        thread.join(30)
    assert srv.proc.wait(30) == 0
    assert not failures, failures[:5]
    assert served_before > 0 and len(statuses) > served_before


def test_readiness_right_after_sigterm_is_503_on_a_new_connection(start_server):
    srv = start_server({"WORKERS": "2", "DRAIN_S": "2"})
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    for _ in range(10):
        response = _request(srv.port, b"GET /health/readiness HTTP/1.1\r\nHost: t\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 503"), response[:200]
        assert b"Connection: close" in response and b"Retry-After: 1" in response
    assert srv.proc.wait(30) == 0


def test_a_kept_alive_connection_is_told_to_close_once_shutdown_starts(start_server):
    srv = start_server()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/health/liveness")
    first = conn.getresponse()
    first.read()
    assert first.getheader("Connection") == "keep-alive"
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    conn.request("GET", "/health/liveness")
    second = conn.getresponse()
    second.read()
    assert second.status == 200 and second.getheader("Connection") == "close"
    assert srv.proc.wait(30) == 0


def test_a_connection_accepted_during_the_drain_stays_open_until_the_listener_closes(start_server):
    """DRAIN_S is there because clients may not know yet that the pod is going: one that
    connects then and sends its request a little later is answered. gthread's 2 s from
    the accept closed such a connection in the middle of DRAIN_S."""
    srv = start_server({"DRAIN_S": "5"})
    srv.proc.send_signal(signal.SIGTERM)
    sigterm = time.monotonic()
    time.sleep(0.5)
    late = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    assert wait_for(lambda: _accept_queue(srv.port) == 0), "the worker never accepted the connection"
    time.sleep(max(sigterm + 3.5 - time.monotonic(), 0))  # 3 s after the accept, before DRAIN_S ends
    late.sendall(b"GET /health/liveness HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = late.recv(65536)
    late.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer, answer[:300]
    assert srv.proc.wait(30) == 0


def test_a_closing_listener_takes_no_new_handshake_but_keeps_its_queued_connections():
    """What closes the window between a worker's last accept and its close(): once
    filtered, a listening socket completes no new handshake (the SYN is dropped, so no
    client believes it is connected), while a connection already queued still works."""
    from func.server.listener import refuse_new_handshakes

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert refuse_new_handshakes(listener)
        late = socket.socket()
        late.settimeout(0.3)
        try:
            late.connect(("127.0.0.1", port))
            connected = True
        except TimeoutError:
            connected = False
        finally:
            late.close()
        assert not connected, "a new handshake completed on a listener that refuses them"

        accepted, _ = listener.accept()
        with accepted, queued:
            queued.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
            accepted.sendall(b"pong")
            assert queued.recv(4) == b"pong"


# recvfrom's number in /proc/PID/syscall, by architecture (asm/unistd.h).
_RECVFROM = {"x86_64": "45", "aarch64": "207"}.get(platform.machine())


def _accept_queue(port: int) -> int:
    """Connections to the listening socket on `port` that no worker has accepted yet
    (a listening socket's rx_queue in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def _stop_while_reading(pid: int, until: float) -> bool:
    """SIGSTOP `pid` while its event loop reads a socket (retrying until `until`): once
    resumed, that turn of its loop goes on to its timeout checks with no poll first,
    as a turn held up by an overloaded host does."""
    while time.monotonic() < until:
        os.kill(pid, signal.SIGSTOP)
        while Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "T":
            time.sleep(0.001)
        if Path(f"/proc/{pid}/syscall").read_text().split(" ", 1)[0] == _RECVFROM:
            return True
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("used", [True, False], ids=["kept-alive", "never-used"])
def test_a_request_that_arrived_while_the_worker_was_held_up_is_answered_not_reset(start_server, used):
    """A worker held up (an overloaded host; here SIGSTOP) past an idle connection's
    shutdown linger finds that connection's request unread in its socket: it answers
    it. Closing it, as its timeout said, reset a request that had reached the server."""
    if _RECVFROM is None:
        pytest.skip(f"recvfrom's syscall number on {platform.machine()} is not in this test")
    # The worker must be stopped inside a read; on a loaded machine 1.6 s of tries may
    # not catch it there (1 run in 13 with three busy loops on 2 cores): a fresh server.
    for _ in range(3):
        response = _held_up(start_server, used)
        if response is not None:
            break
    else:
        pytest.fail("the worker was never caught reading, in 3 servers")
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


def _held_up(start_server, used: bool) -> bytes | None:
    """What a connection idle since before SIGTERM gets for a request sent while the
    worker is held up past the connection's linger; None if the worker could not be
    stopped inside a read in time."""
    srv = start_server({"DRAIN_S": "2"})
    worker = int(subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()[0])
    kept = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    assert wait_for(lambda: _accept_queue(srv.port) == 0), "the worker never accepted the connection"
    if used:
        kept.sendall(b"GET /health/liveness HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"Connection: keep-alive" in kept.recv(65536)
    time.sleep(0.5)  # the connection accepted, or taken back into keep-alive, before SIGTERM

    # Request heads arriving a byte at a time keep the worker's event loop turning.
    trickles = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(8)]
    stop = threading.Event()

    def send_slowly() -> None:
        head = b"GET /health/liveness HTTP/1.1\r\nX-Pad: " + b"a" * 60000
        for at in range(len(head)):
            for trickle in trickles:
                if stop.is_set():
                    return
                trickle.sendall(head[at : at + 1])
            time.sleep(0.0005)

    sender = threading.Thread(target=send_slowly, daemon=True)
    sender.start()
    srv.proc.send_signal(signal.SIGTERM)
    sigterm = time.monotonic()
    time.sleep(2.2)  # past DRAIN_S: the idle connection's timeout is now T+4
    response = None
    if _stop_while_reading(worker, until=sigterm + 3.8):
        try:
            kept.sendall(b"GET /health/liveness HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(max(sigterm + 4.5 - time.monotonic(), 0))  # past the connection's linger
        finally:
            os.kill(worker, signal.SIGCONT)
        response = kept.recv(65536)
    stop.set()
    sender.join(5)
    for trickle in trickles:
        trickle.close()
    kept.close()
    if response is not None:
        assert srv.proc.wait(30) == 0
    return response
