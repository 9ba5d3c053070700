"""A kept-alive connection is reused for CONNECTION_MAX_AGE seconds, then a response
closes it, so clients spread again over every worker (say, after one was replaced); past
MAX_CONNECTIONS the connection idle longest is closed to let a new one in."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time

import pytest

from func.server.application import MAX_CONNECTIONS


def get(conn: http.client.HTTPConnection) -> str | None:
    conn.request("GET", "/health/liveness")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    return resp.getheader("Connection")


def test_a_kept_alive_connection_is_closed_after_connection_max_age(start_server):
    srv = start_server({"CONNECTION_MAX_AGE": "1"})
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    assert [get(conn) for _ in range(3)] == ["keep-alive"] * 3
    time.sleep(1.2)
    assert get(conn) == "close"


def test_idle_connections_past_the_limit_shed_the_oldest_and_new_clients_are_served(start_server):
    """Silent and kept-alive connections past what a worker holds (MAX_CONNECTIONS) do not
    stop new ones being accepted: the connection idle longest is closed instead."""
    srv = start_server({"WORKERS": "1", "CONNECTION_MAX_AGE": "0"})
    kept = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    get(kept)  # the oldest: kept alive after one request
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(MAX_CONNECTIONS + 50)]
    try:
        fresh = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        assert get(fresh) == "keep-alive"
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""  # shed, oldest first
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[-1].recv(1)  # the newest are still open
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            get(kept)
    finally:
        for s in idle:
            s.close()


def test_past_the_limit_with_none_idle_the_request_arriving_longest_gets_503(start_server):
    srv = start_server({"WORKERS": "1"})
    half = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: app"
    arriving = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(half)
            arriving.append(s)
        fresh = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        assert get(fresh) == "keep-alive"
        answer = arriving[0].recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer, answer
        assert f"limit of {MAX_CONNECTIONS} connections".encode() in answer
    finally:
        for s in arriving:
            s.close()


@pytest.mark.parametrize("oldest_was_used", [True, False], ids=["kept-alive", "never-used"])
def test_past_the_limit_a_request_that_just_arrived_on_the_oldest_idle_connection_is_answered(
    start_server, oldest_was_used
):
    """The worker, held up (an overloaded host; here SIGSTOP), finds a new connection
    queued and a request on the connection idle longest, in that order. Making room, it
    closed that connection with the request unread in it: a reset, the request lost. It
    reads it now, and closes the next idle one."""
    srv = start_server({"WORKERS": "1", "CONNECTION_MAX_AGE": "0"})
    worker = int(subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()[0])
    oldest = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    request = b"GET /health/liveness HTTP/1.1\r\nHost: t\r\n\r\n"
    if oldest_was_used:
        oldest.sendall(request)
        assert b"Connection: keep-alive" in oldest.recv(65536)
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        time.sleep(0.5)  # every one accepted: the worker is at its limit
        os.kill(worker, signal.SIGSTOP)
        try:
            newcomer = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            time.sleep(0.05)
            oldest.sendall(request)
            time.sleep(0.05)
        finally:
            os.kill(worker, signal.SIGCONT)
        answer = oldest.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""  # closed in its place
        newcomer.sendall(request)
        assert newcomer.recv(65536).startswith(b"HTTP/1.1 200")
        newcomer.close()
    finally:
        oldest.close()
        for s in idle:
            s.close()
