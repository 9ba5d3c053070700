"""gunicorn's HTTP/1.1 response, made cheaper for small answers:

- its head is sent with the first body bytes: one send, not two. Every send lets go of
  the interpreter lock, and in a busy worker taking it back costs more than the send
  itself: one send instead of two saved about 17 us of server CPU per one-row request at
  c=32 (loadtests/bench_features.py). Bodies past COALESCE_BYTES, chunked ones and
  bodiless responses (HEAD, 204, 304) go out as gunicorn sends them.
- its Date header is formatted once a second, not once a response (email.utils'
  formatdate was 5% of a busy worker's interpreter time).
- a header name is checked once per process, not once a response: every answer carries
  the model headers, and gunicorn's checks of each name (a token, not Content-Length,
  not hop-by-hop) cost about 0.4 us a header. Values are checked every time.
"""

from __future__ import annotations

import time

from gunicorn import util
from gunicorn.http import wsgi

# Copying a larger body to put the head before it costs more than the second send.
COALESCE_BYTES = 64 * 1024
# Names gunicorn passes on as they are, once checked; the app sets a few dozen at most.
PLAIN_NAMES_MAX = 256


class _Date:
    """The Date header's value, formatted when the second changes."""

    def __init__(self) -> None:
        self._cached = (-1, "")  # (second, text), replaced whole: threads read it unlocked

    def now(self) -> str:
        second = int(time.time())
        cached = self._cached
        if cached[0] != second:
            cached = (second, util.http_date(second))
            self._cached = cached
        return cached[1]


class Response(wsgi.Response):
    date = _Date()  # shared by every response of the process
    plain_names: set[str] = set()  # header names checked to be tokens gunicorn passes on as they are

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        """gunicorn's, header by header, without checking a name again once it has
        passed: its value is still checked, and stripped, as gunicorn does."""
        plain = self.plain_names
        for name, value in headers:
            if type(name) is str and name in plain and type(value) is str and wsgi.HEADER_VALUE_RE.fullmatch(value):
                self.headers.append((name, value.strip(" \t")))
                continue
            super().process_headers([(name, value)])
            if len(plain) < PLAIN_NAMES_MAX and _passed_on_as_is(name):
                plain.add(name)

    def default_headers(self) -> list[str]:
        """gunicorn's own (status line, Server, Date, Connection), the date from the cache."""
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        major, minor = self.req.version
        headers = [
            f"HTTP/{major}.{minor} {self.status}\r\n",
            f"Server: {self.version}\r\n",
            f"Date: {self.date.now()}\r\n",
            f"Connection: {connection}\r\n",
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def write(self, arg: bytes) -> None:
        if not self._fits_one_send(arg):
            super().write(arg)
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True
        self.sent += len(arg)
        util.write(self.sock, head + arg)

    def _fits_one_send(self, arg: bytes) -> bool:
        """The first body bytes of a plain (not chunked) response, all of them to be sent."""
        return (
            not self.headers_sent
            and type(arg) is bytes
            and 0 < len(arg) <= COALESCE_BYTES
            and not self.chunked
            and not self._omits_body
            and (self.response_length is None or len(arg) <= self.response_length)
        )


def _passed_on_as_is(name: object) -> bool:
    """A name gunicorn's process_headers accepts and passes on unchanged."""
    return (
        type(name) is str
        and wsgi.TOKEN_RE.fullmatch(name) is not None
        and name.lower() != "content-length"
        and not util.is_hoppish(name)
    )


def install() -> None:
    """Make gunicorn build its responses with this class in this process. gthread takes a
    response class only for HTTP/2, so the HTTP/1 one is the module's `Response`."""
    wsgi.Response = Response
