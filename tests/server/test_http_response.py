"""func/server/http_response.py on a real socket: a SOCK_SEQPACKET pair keeps every send a
record of its own, so one recv shows what one send carried."""

from __future__ import annotations

import socket
import time

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from func.server.http_response import COALESCE_BYTES, Response


def _response(request: bytes) -> tuple[Response, socket.socket]:
    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client_end.sendall(request)
    cfg = Config()
    req = next(RequestParser(cfg, server_end, ("127.0.0.1", 1)))
    return Response(req, server_end, cfg), client_end


def _records(sock: socket.socket) -> list[bytes]:
    sock.settimeout(0.2)
    records = []
    try:
        while record := sock.recv(1 << 20):
            records.append(record)
    except TimeoutError:
        pass
    return records


def test_head_and_body_leave_in_one_send():
    resp, client = _response(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "16")])
    resp.write(b'{"predictions":1')
    resp.close()
    (record,) = _records(client)
    assert record.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 16\r\n" in record
    assert record.endswith(b'\r\n\r\n{"predictions":1')


@pytest.mark.parametrize(
    ("method", "status", "body", "sends"),
    [
        ("HEAD", "200 OK", b"x" * 10, [b""]),  # no body on the wire: the head alone
        ("GET", "204 No Content", b"", [b""]),
        ("GET", "200 OK", b"y" * (COALESCE_BYTES + 1), [b"", b"y" * (COALESCE_BYTES + 1)]),
    ],
)
def test_other_responses_go_out_as_gunicorn_sends_them(method, status, body, sends):
    resp, client = _response(f"{method} / HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    resp.start_response(status, [("Content-Length", str(len(body)))] if body else [])
    if body:
        resp.write(body)
    resp.close()
    records = _records(client)
    assert len(records) == len(sends)
    assert records[0].startswith(f"HTTP/1.1 {status}\r\n".encode()) and records[0].endswith(b"\r\n\r\n")
    assert records[1:] == sends[1:]


def test_the_date_header_is_the_current_http_date():
    from email.utils import parsedate_to_datetime

    resp, client = _response(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    resp.start_response("200 OK", [("Content-Length", "2")])
    before = time.time()
    resp.write(b"{}")
    resp.close()
    (record,) = _records(client)
    (date,) = [line[6:] for line in record.decode("latin-1").split("\r\n") if line.startswith("Date: ")]
    assert date.endswith(" GMT")
    assert int(before) <= parsedate_to_datetime(date).timestamp() <= time.time()


def test_header_names_are_checked_once_and_values_every_time():
    from gunicorn.http.errors import InvalidResponseHeader, InvalidResponseHeaderName

    headers = [("X-Model-Name", "m"), ("Connection", "close"), ("Content-Length", "2"), ("X-Other", " v\t")]
    for _ in range(2):  # the second response finds the names checked
        resp, _client = _response(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        resp.start_response("200 OK", headers)
        # hop-by-hop dropped, the length noted, values stripped: as gunicorn does
        assert resp.headers == [("X-Model-Name", "m"), ("Content-Length", "2"), ("X-Other", "v")]
        assert resp.response_length == 2
    assert "X-Model-Name" in Response.plain_names and "Connection" not in Response.plain_names
    resp, _client = _response(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    with pytest.raises(InvalidResponseHeader):
        resp.start_response("200 OK", [("X-Model-Name", "m\r\nSet-Cookie: x=1")])
    resp, _client = _response(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    with pytest.raises(InvalidResponseHeaderName):
        resp.start_response("200 OK", [("X Bad", "v")])
