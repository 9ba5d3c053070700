"""gunicorn's threaded worker, made to hold up against slow clients, shutdown and restarts.

- A request is read by the event loop, not by a thread: a thread takes it once its
  header is complete and its body has arrived (bodies up to BODY_BUFFER, chunked ones
  too; a larger one after its first BODY_BUFFER bytes). Idle, silent or trickling
  clients then hold a socket, not one of the few threads. A client gets READ_TIMEOUT
  seconds from the first byte of a request to its last, then 408.
- gunicorn's own errors (a malformed header, headers too large) are JSON with the model
  headers, like every other error.
- SIGTERM turns readiness to 503, keeps accepting for DRAIN_S (a client may not know
  yet that this instance is going), then stops new handshakes (listener.py), accepts
  what is already queued on the listening socket and closes it: every connection that
  reached the worker is answered.
  Responses meanwhile say `Connection: close`.
- A worker that replaces a dead one listens only once its model has loaded; the first
  workers listen at once, so liveness answers while a slow model loads.
- A kept-alive connection is closed after CONNECTION_MAX_AGE seconds, so clients spread
  again over all workers after one was replaced.
- A connection closed after its response lingers (LINGER_S) in the event loop, not in a
  blocking read: gthread's own graceful close held the loop up to 2 s per client that
  kept its end open, and every other client waited.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http import HTTPStatus
from typing import Any, NoReturn

from gunicorn import sock as gunicorn_sock
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from ..api.serving import Serving
from ..codecs import rows as codecs
from ..config import Settings
from ..errors import RequestTimeout, WarmstartError
from ..model import readiness
from ..model.state import ServingState
from . import http_response
from .listener import refuse_new_handshakes

log = logging.getLogger("warmstart.worker")

# A request head not complete within this many bytes goes to gunicorn's parser, which
# refuses it with 414 or 431 (or reads on, bounded by READ_TIMEOUT).
HEAD_LIMIT = 64 * 1024
# Bodies up to this size are read whole before a thread is taken: a single-row request
# is under 1 KB, a 100-row one about 60 KB. A larger body goes to a thread after its
# first BODY_BUFFER bytes, which a client that trickles bytes never sends in time.
BODY_BUFFER = 64 * 1024
RECV_BYTES = 64 * 1024
# How often the event loop looks for requests past their deadline.
SWEEP_S = 0.1
# After a response that closes its connection, what the client still sends is read and
# dropped for up to LINGER_S (LINGER_BYTES at most) before the socket closes: closing
# with unread bytes resets the connection, which can cut off the response (RFC 9112
# section 9.6). gunicorn does this with blocking reads on the event loop.
LINGER_S = 2.0
LINGER_BYTES = 64 * 1024

# A response header the application got wrong is the server's fault, not the client's.
_SERVER_FAULTS = (
    http_errors.InvalidResponseHeader,
    http_errors.InvalidResponseHeaderName,
    http_errors.ConfigurationProblem,
)
# gunicorn's protocol errors, most specific first: (class, status, code).
_PROTOCOL_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (http_errors.LimitRequestHeaders, 431, "headers_too_large"),
    (http_errors.LimitRequestLine, 414, "uri_too_long"),
    (http_errors.UnsupportedTransferCoding, 501, "not_implemented"),
    (http_errors.ExpectationFailed, 417, "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden"),
    (http_errors.ParseException, 400, "malformed_request"),
)


def describe_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) of an error raised while reading or answering a request."""
    if isinstance(exc, WarmstartError):
        return exc.status, exc.code, exc.message
    if not isinstance(exc, _SERVER_FAULTS):
        for cls, status, code in _PROTOCOL_ERRORS:
            if isinstance(exc, cls):
                return status, code, str(exc)
    return 500, "internal", "internal error; see the server log"


CHUNKED = -1  # the body length of a chunked request


def _body_length(head: bytes) -> int | None:
    """Body bytes a complete request head announces (0 for none, CHUNKED), or None when
    only gunicorn's parser can say (`Expect: 100-continue`, a malformed length)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            if length < 0:
                return None
        elif name == b"transfer-encoding" and value.strip().lower().endswith(b"chunked"):
            return CHUNKED
        elif name in (b"transfer-encoding", b"expect"):
            return None
    return length


def _chunked_body_complete(buf: bytearray, pos: int) -> bool:
    """Whether the chunked body starting at `buf[pos]` has arrived, trailers included.
    Framing that does not parse counts as complete: gunicorn's parser refuses it."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return False
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            return True
        if size < 0:
            return True
        if size == 0:  # the last chunk: then trailer lines, if any, and an empty line
            return buf.startswith(b"\r\n", eol + 2) or buf.find(b"\r\n\r\n", eol + 2) >= 0
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return False


class _Conn(TConn):
    """A client connection and the request the event loop is reading on it."""

    def __init__(
        self, cfg: Any, client: socket.socket, addr: Any, server: Any, linger: Callable[[_Conn], None]
    ) -> None:
        super().__init__(cfg, client, addr, server)
        self._linger = linger  # the worker's Worker._linger
        self.drained = 0  # bytes read and dropped while lingering
        self.opened = time.monotonic()
        self.buf = bytearray()
        self.body_start: int | None = None  # where the body starts in buf, once the head is in
        self.body_length: int | None = None
        self.deadline = 0.0  # when the request being read must be complete
        self.polled = False  # registered with the event loop's poller

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self._linger(self)  # not gthread's blocking close_graceful
        else:
            super().close()


class Worker(ThreadWorker):
    """The gthread worker with the behaviour in this module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[_Conn, None] = {}  # connections whose request the event loop reads
        self.lingering: dict[_Conn, float] = {}  # closing connections: when they close at the latest
        self._thread = threading.local()  # .req: the request this thread is answering
        self._held: list[tuple[socket.socket, Any, Any]] = []  # a replacement's early connections
        self._swept = 0.0
        self._stop_accepting_at = 0.0
        self._shutdown_deadline = 0.0

    # -- startup ---------------------------------------------------------------------

    @property
    def replacement(self) -> bool:
        """A worker started after the first generation: it replaces one that died."""
        return self.age > self.cfg.workers

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.serving: Serving = self.wsgi.extensions["warmstart.serving"]
        self.state: ServingState = self.serving.state
        self.settings: Settings = self.serving.settings
        # A malformed chunked body is found while the application reads it
        self.wsgi.register_error_handler(http_errors.ParseException, self._body_error)
        if self.settings.shared_dir:
            args = (self.settings.shared_dir,)
            threading.Thread(target=self._report_loaded, args=args, name="ready-mark", daemon=True).start()

    def _body_error(self, exc: Exception) -> Any:
        status, code, message = describe_error(exc)
        self._close_after_response()  # where the next request starts is unknown
        return self.serving.respond({"error": {"code": code, "message": message}}, status)

    def _close_after_response(self) -> None:
        req = getattr(self._thread, "req", None)
        if req is not None:
            req.must_close = True

    def _report_loaded(self, shared_dir: str) -> None:
        self.state.wait_loaded()
        if self.state.loaded is not None:
            readiness.loaded(shared_dir, self.age)

    def init_process(self) -> None:
        http_response.install()
        if self.replacement:
            # gunicorn bound this worker's socket before the fork; until the model has
            # loaded the kernel must send new connections to the other workers. The
            # few it queued meanwhile wait for the model rather than being reset.
            self._held = list(self._accept_queued())
        super().init_process()

    def run(self) -> None:
        self.poller.register(self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks)
        if self.replacement:
            while self.alive and not self.state.wait_loaded(0):
                self._tick(0.05)
            self.sockets = gunicorn_sock.create_sockets(self.cfg, self.log) if self.alive else []
            for held in self._held:
                self._track(*held)
        self.set_accept_enabled(True)
        while self.alive and self.is_parent_alive():
            self._tick(1.0, accepting=True)
        self._shut_down()

    # -- the event loop --------------------------------------------------------------

    def _tick(self, timeout: float, accepting: bool = False) -> None:
        self.notify()
        if accepting:
            self.set_accept_enabled(self.nr_conns < self.worker_connections)
        self.wait_for_and_dispatch_events(timeout)
        self.murder_keepalived()
        now = time.monotonic()
        if now - self._swept >= SWEEP_S:
            self._swept = now
            self._sweep(now)

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self._track(client, addr, listener.getsockname())

    def _accept_queued(self) -> Iterator[tuple[socket.socket, Any, Any]]:
        """Close the listening sockets without resetting the connections queued on them
        (closing a listening socket resets what it has not accepted): refuse new
        handshakes, accept what is queued, then close."""
        self.set_accept_enabled(False)
        for listener in self.sockets:
            refuse_new_handshakes(listener)
            listener.setblocking(False)
            while True:
                try:
                    client, addr = listener.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    break
                yield client, addr, listener.getsockname()
            listener.close()
        self.sockets = []

    def _track(self, client: socket.socket, addr: Any, server: Any) -> None:
        self.nr_conns += 1
        self._await_request(_Conn(self.cfg, client, addr, server, self._linger))

    def on_client_socket_readable(self, conn: _Conn, client: socket.socket) -> None:
        """A kept-alive connection has a new request coming: read it in the event loop."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_request(conn)

    def _await_request(self, conn: _Conn) -> None:
        idle = self.cfg.keepalive if self.alive else STOP_KEEPALIVE_LINGER
        conn.timeout = time.monotonic() + idle
        conn.body_start = None
        self.reading[conn] = None
        # Most requests are there already: read at once, and poll only for the rest.
        self._on_readable(conn)
        if conn in self.reading and not conn.polled:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            conn.polled = True

    def _stop_reading(self, conn: _Conn) -> None:
        del self.reading[conn]
        if conn.polled:
            self.poller.unregister(conn.sock)
            conn.polled = False

    def _on_readable(self, conn: _Conn, _fileobj: Any = None) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if not conn.buf:
            conn.deadline = time.monotonic() + self.settings.read_timeout
        conn.buf += data
        if self._request_arrived(conn):
            self._dispatch(conn)

    @staticmethod
    def _request_arrived(conn: _Conn) -> bool:
        """Whether the event loop has read enough of the request to give it to a thread."""
        buf = conn.buf
        if conn.body_start is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return len(buf) >= HEAD_LIMIT
            conn.body_start = end + 4
            conn.body_length = _body_length(bytes(buf[:end]))
        body = len(buf) - conn.body_start
        if conn.body_length is None or body >= BODY_BUFFER:
            return True
        if conn.body_length == CHUNKED:
            return _chunked_body_complete(buf, conn.body_start)
        return body >= conn.body_length

    def _dispatch(self, conn: _Conn) -> None:
        """Hand a connection whose request has arrived to a thread."""
        self._stop_reading(conn)
        if conn.parser is None:
            conn.init()
            conn.parser.unreader.chunk = partial(self._read_body, conn)
        conn.parser.unreader.unread(bytes(conn.buf))
        conn.buf.clear()
        # The thread makes the socket blocking (gthread's handle): doing it here as well
        # would be one more system call, which costs the interpreter lock under load.
        super().enqueue_req(conn)

    def enqueue_req(self, conn: Any) -> None:
        """gthread calls this for a request already buffered behind the one just answered
        (pipelining): it gets READ_TIMEOUT of its own."""
        conn.deadline = time.monotonic() + self.settings.read_timeout
        super().enqueue_req(conn)

    def _read_body(self, conn: _Conn, size_hint: int | None = None) -> bytes:
        """The parser's reads on a thread (the rest of a large body, a chunked one),
        bounded by the request's deadline."""
        remaining = conn.deadline - time.monotonic()
        if remaining <= 0:
            self._time_out()
        size = conn.parser.unreader.mxchunk
        if size_hint and size_hint > size:
            size = min(size_hint, conn.parser.unreader.max_body_chunk)
        current = conn.sock.gettimeout()
        # gunicorn may have set a shorter bound itself (draining an unread body)
        conn.sock.settimeout(remaining if current is None else min(current, remaining))
        try:
            return conn.sock.recv(size)
        except TimeoutError:
            self._time_out()
        finally:
            conn.sock.settimeout(current)  # the response is written without this bound

    def _time_out(self) -> NoReturn:
        self._close_after_response()  # the rest of the body may still come
        raise RequestTimeout(self._timeout_message())

    def _timeout_message(self) -> str:
        return f"the request was not received within READ_TIMEOUT={self.settings.read_timeout:g} s"

    def _sweep(self, now: float) -> None:
        """408 for requests past their deadline; close connections idle past their timeout
        or done lingering."""
        for conn in list(self.reading):
            if conn.buf and now >= conn.deadline:
                self._answer_and_drop(conn, RequestTimeout(self._timeout_message()))
            elif not conn.buf and now >= conn.timeout:
                self._drop(conn)
        for conn, until in list(self.lingering.items()):
            if now >= until:
                self._end_linger(conn)

    def _drop(self, conn: _Conn, graceful: bool = False) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close(graceful)

    def _answer_and_drop(self, conn: _Conn, exc: WarmstartError) -> None:
        try:
            conn.sock.send(self.error_response(exc), socket.MSG_DONTWAIT)
        except OSError:
            pass
        self._drop(conn, graceful=True)

    def _linger(self, conn: _Conn) -> None:
        """Close a connection whose response has been sent: half-close, then drop what
        the client still sends until it closes (or LINGER_S, LINGER_BYTES)."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            conn.sock.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER_S
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn: _Conn, _fileobj: Any = None) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn: _Conn) -> None:
        del self.lingering[conn]
        self.poller.unregister(conn.sock)
        conn.sock.close()

    # -- requests and errors ---------------------------------------------------------

    def handle_request(self, req: Any, conn: Any) -> bool:
        self._thread.req = req
        max_age = self.settings.connection_max_age
        if max_age and time.monotonic() - conn.opened > max_age:
            req.must_close = True
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        try:
            return super()._keepalive_after(conn, keepalive)
        except RequestTimeout:
            return False  # the unread rest of a body did not come in time

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """gunicorn's error page, as JSON with the model headers like every response."""
        status, _, message = describe_error(exc)
        if status >= 500:
            self.log.exception("error handling a request")
        else:
            log.info("refused a request from %s: %s", (addr or ("",))[0], message)
        try:
            client.sendall(self.error_response(exc))
        except OSError:
            pass

    def error_response(self, exc: BaseException) -> bytes:
        """A complete HTTP/1.1 error response that closes the connection."""
        status, code, message = describe_error(exc)
        self.serving.metrics.traffic.refused(status)
        body = codecs.dump_json({"error": {"code": code, "message": message}})
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
            **self.serving.model_headers(),
        }
        if isinstance(exc, WarmstartError):
            headers.update(exc.headers)
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return (head + "\r\n").encode("latin-1") + body

    # -- shutdown --------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.alive:
            now = time.monotonic()
            self._shutdown_deadline = now + self.cfg.graceful_timeout
            self._stop_accepting_at = now + self.settings.drain_s
        super().handle_exit(sig, frame)

    def _shut_down(self) -> None:
        self.state.begin_shutdown()
        if not self._shutdown_deadline:  # the master went away rather than sending SIGTERM
            self._shutdown_deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < self._stop_accepting_at and self.is_parent_alive():
            self._tick(min(1.0, max(self._stop_accepting_at - time.monotonic(), 0.0)), accepting=True)
        for queued in list(self._accept_queued()):
            self._track(*queued)
        linger = time.monotonic() + STOP_KEEPALIVE_LINGER
        self._cap_keepalive(linger)
        for conn in self.reading:
            conn.timeout = min(conn.timeout, linger)
        while (self.nr_conns > 0 or self.lingering) and time.monotonic() < self._shutdown_deadline:
            self._tick(0.1)
        self.murder_keepalived(force=True)
        for conn in list(self.reading):
            self._drop(conn)
        for conn in list(self.lingering):
            self._end_linger(conn)
        # Every accepted request has been answered: what the prediction log holds goes out
        # now, within the grace period (after it, the master kills the worker).
        self.serving.close()
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
