"""A kept-alive connection is reused for CONNECTION_MAX_AGE seconds, then a response
closes it, so clients spread again over every worker (say, after one was replaced)."""

from __future__ import annotations

import http.client
import time


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
