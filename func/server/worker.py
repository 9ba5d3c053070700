"""gunicorn's threaded worker, made to hold up against slow clients, shutdown and restarts.

- A request is read by the event loop, not by a thread: a thread takes it once its
  header and its whole body have arrived, chunked ones too. Idle, silent, trickling or
  vanished clients then hold a socket, not one of the few threads, and a thread never
  waits on a client. A client gets READ_TIMEOUT seconds from the first byte of a
  request to its last, then 408. What the head alone settles is answered from the
  event loop at once: a Content-Length (or chunks) past MAX_REQUEST_BYTES 413, a
  Transfer-Encoding other than chunked 501, bare-LF line ends 400, and
  `Expect: 100-continue` gets its `100 Continue` there.
- The bodies a worker buffers are bounded: past THREADS x MAX_REQUEST_BYTES in all, a
  connection past its first BODY_BUFFER bytes waits (unread, under READ_TIMEOUT) for
  others to be answered. Small requests are never held back.
- A worker holds MAX_CONNECTIONS connections (application.py). A new one past that is
  accepted all the same and the connection idle longest closes; if none is idle, the
  request that has been arriving longest gets 503. Idle connections cannot lock new
  clients out.
- gunicorn's own errors (a malformed header, headers too large) are JSON with the model
  headers, like every other error.
- SIGTERM turns readiness to 503, keeps accepting for DRAIN_S (a client may not know
  yet that this instance is going), then stops new handshakes (listener.py), accepts
  what is already queued on the listening socket and closes it: every connection that
  reached the worker is answered.
  Responses meanwhile say `Connection: close`; a connection idle meanwhile (accepted
  then, or kept alive by a response sent before) stays open until the listener closes,
  and every idle connection closes STOP_KEEPALIVE_LINGER after that. A connection idle
  past its timeout is looked at before it closes: a request that arrived since the last
  poll is answered.
- A worker that replaces a dead one listens only once its model has loaded; the first
  workers listen at once, so liveness answers while a slow model loads. A replacement
  that cannot load the model, or any worker that loaded other bytes than the pod serves
  (the file was replaced while the pod ran), stops the whole server with gunicorn's
  "worker failed to boot" exit: one worker answering 503, or another version, behind
  a pod that says it is ready would never end, and a restart serves one model.
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
from gunicorn.arbiter import Arbiter
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from ..api.serving import Serving
from ..codecs import rows as codecs
from ..config import Settings
from ..errors import (
    MalformedRequest,
    NotReady,
    RequestTimeout,
    UnsupportedTransferCoding,
    WarmstartError,
    body_too_large,
)
from ..model import readiness
from ..model.state import ServingState
from ..observe.drift import FLUSH_S
from . import http_response
from .listener import refuse_new_handshakes

log = logging.getLogger("warmstart.worker")

# A request head not complete within this many bytes goes to gunicorn's parser, which
# refuses it with 414 or 431 (or reads on, bounded by READ_TIMEOUT).
HEAD_LIMIT = 64 * 1024
# A request is always read up to this size, whatever the worker already buffers: a
# single-row request is under 1 KB, a 100-row one about 60 KB.
BODY_BUFFER = 64 * 1024
RECV_BYTES = 64 * 1024
# The most one recv() asks for while a large body arrives (as gunicorn's body reads):
# every recv lets go of the interpreter lock, and taking it back costs under load.
MAX_RECV_BYTES = 1024 * 1024
# How often the event loop looks for requests past their deadline.
SWEEP_S = 0.1
# How often a busy event loop tells the master it is alive (a file's mtime, a system
# call) and checks that the master is (getppid): gunicorn does both on every turn of the
# loop, about one turn in two requests under load. The master kills a worker silent for
# its timeout, 30 s; a worker whose master died stops within this.
HEARTBEAT_S = 0.5
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


def _framing(head: bytes, limit: int) -> tuple[int | None, bool]:
    """The body a complete request head announces: its length (0 for none, CHUNKED), or
    None when gunicorn's parser refuses the head anyway (a malformed length, an
    expectation other than 100-continue); and whether the client waits for
    `100 Continue` before sending it. Raises what the head alone settles: 413 for a
    length past `limit`, 501 for a transfer coding other than chunked."""
    length: int | None = 0
    chunked = expect = False
    lines = head.split(b"\r\n")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None, False
            if length < 0:
                return None, False
        elif name == b"transfer-encoding":
            codings = [coding.strip() for coding in value.lower().split(b",")]
            if codings[-1] != b"chunked":
                return None, False  # no length can be known: gunicorn's 400 (RFC 9112 6.3)
            if any(coding not in (b"chunked", b"identity") for coding in codings):
                raise UnsupportedTransferCoding(
                    f"Transfer-Encoding {value.strip().decode('latin-1')!r} is not supported: "
                    "send the body as is or chunked"
                )
            chunked = True
        elif name == b"expect":
            if value.strip().lower() != b"100-continue":
                return None, False
            expect = lines[0].endswith(b"HTTP/1.1")  # HTTP/1.0 must ignore it (RFC 9110 10.1.1)
    if chunked:
        return CHUNKED, expect
    if length > limit:
        raise body_too_large(limit)
    return length, expect and length > 0


def _target(buf: bytearray) -> str:
    """The path of the request line at the start of `buf`, or "" if there is none yet."""
    line = bytes(buf[: buf.find(b"\n")]) if b"\n" in buf else b""
    parts = line.split(b" ")
    return parts[1].split(b"?", 1)[0].decode("latin-1") if len(parts) == 3 else ""


def _bare_lf(buf: bytearray, start: int) -> bool:
    """Whether a line of `buf` from `start` on ends with LF alone, which HTTP/1.1 refuses."""
    at = buf.find(b"\n", start)
    while at >= 0:
        if at == 0 or buf[at - 1] != 0x0D:
            return True
        at = buf.find(b"\n", at + 1)
    return False


def _request_waiting(sock: socket.socket) -> bool:
    """Whether the client has sent bytes this side has not read (a non-blocking peek)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing there yet (BlockingIOError), or reset: nothing to answer
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
        self.scanned = 0  # how much of buf was searched for the end of the head
        self.body_start: int | None = None  # where the body starts in buf, once the head is in
        self.body_length: int | None = None
        self.next_chunk = 0  # chunked: where in buf the next chunk-size line starts
        self.chunked_bytes = 0  # chunked: the data the chunk-size lines so far announce
        self.deadline = 0.0  # when the request being read must be complete
        self.polled = False  # registered with the event loop's poller
        # What the event loop read past a request's first BODY_BUFFER bytes of body, for
        # the parser to take a piece at a time (see Worker._dispatch).
        self.rest: memoryview | None = None

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
        self.idle: dict[_Conn, None] = {}  # those of them with no byte yet, oldest first
        self.large: dict[_Conn, None] = {}  # those of them past BODY_BUFFER, in the order they got there
        self.paused: dict[_Conn, None] = {}  # those of them left unread while the buffers are full
        self.buffered = 0  # bytes in the buffers of `reading`
        self.lingering: dict[_Conn, float] = {}  # closing connections: when they close at the latest
        self._thread = threading.local()  # .req: the request this thread is answering
        self._held: list[tuple[socket.socket, Any, Any]] = []  # a replacement's early connections
        self._swept = 0.0
        self._heartbeat = 0.0
        self._parent_alive = True
        self._stop_accepting_at = 0.0
        self._shutdown_deadline = 0.0
        self._stops_pod = False
        self._reporter: threading.Thread | None = None

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
        # As many whole bodies as the threads can answer at once may wait in the loop.
        self.buffer_budget = self.cfg.threads * self.settings.max_request_bytes
        # Read once: gunicorn's Config answers each attribute through __getattr__ (0.4 us)
        self.keepalive_s = self.cfg.keepalive
        # A malformed chunked body is found while the application reads it
        self.wsgi.register_error_handler(http_errors.ParseException, self._body_error)
        if self.settings.shared_dir:
            args = (self.settings.shared_dir,)
            self._reporter = threading.Thread(target=self._report_loaded, args=args, name="ready-mark", daemon=True)
            self._reporter.start()

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
        elif self.replacement or self.state.model_changed:
            log.error(
                "worker %d cannot serve the model this server serves; stopping the server so that it "
                "restarts on one model",
                self.age,
            )
            self._stops_pod = True
            self.alive = False

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
            while self.alive and self._reporter is not None and self._reporter.is_alive():
                self._tick(0.05)
            self.sockets = gunicorn_sock.create_sockets(self.cfg, self.log) if self.alive else []
            for held in self._held:
                self._track(*held)
        self.set_accept_enabled(True)
        while self.alive and self._parent_alive:
            self._tick(1.0, accepting=True)
        self._shut_down()
        if self._stops_pod:
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)  # the master stops every worker and exits

    # -- the event loop --------------------------------------------------------------

    def _tick(self, timeout: float, accepting: bool = False) -> None:
        now = time.monotonic()
        if now - self._heartbeat >= HEARTBEAT_S:
            self._heartbeat = now
            self.notify()
            self._parent_alive = self.is_parent_alive()
        if accepting:
            # Past MAX_CONNECTIONS, accept only while a connection can make room.
            room = self.nr_conns < self.worker_connections or self.reading or self.keepalived_conns
            self.set_accept_enabled(bool(room))
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
        if self.nr_conns >= self.worker_connections:
            self._make_room()
        self._track(client, addr, listener.getsockname())

    def _make_room(self) -> None:
        """Close the connection idle longest, kept alive or never used; with none idle,
        answer 503 to the request that has been arriving longest. One whose request has
        arrived since the last poll is read instead, and the next one looked at: closing a
        socket with unread bytes resets it, and that request would be lost."""
        while True:
            kept = self.keepalived_conns[0] if self.keepalived_conns else None
            fresh = next(iter(self.idle), None)
            if kept is not None and (fresh is None or kept.timeout <= fresh.timeout):
                if _request_waiting(kept.sock):
                    self.on_client_socket_readable(kept, kept.sock)  # no longer kept alive
                    continue
                self.keepalived_conns.popleft()
                self.poller.unregister(kept.sock)
                self.nr_conns -= 1
                kept.close()
            elif fresh is not None:
                if _request_waiting(fresh.sock):
                    self._on_readable(fresh)
                    if fresh in self.idle:  # nothing came of the read after all
                        self._drop(fresh)
                    continue
                self._drop(fresh)
            elif self.reading:
                oldest = next(iter(self.reading))
                limit = self.worker_connections
                self._answer_and_drop(oldest, NotReady(f"the server holds its limit of {limit} connections; retry"))
            return

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
        try:
            self.keepalived_conns.remove(conn)
        except ValueError:
            return  # read or closed earlier in this turn of the loop (_make_room): a stale event
        self.poller.unregister(client)
        self._await_request(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """gthread's, but a connection taken back into keep-alive while the worker still
        accepts (DRAIN_S after SIGTERM; its response, sent before, announced keep-alive)
        keeps its idle timeout like those idle at SIGTERM, until the listener closes and
        STOP_KEEPALIVE_LINGER after: gthread's 2 s from now closed it in the middle of
        DRAIN_S, while a client that was told keep-alive may be sending on it."""
        super().finish_request(conn, fs)
        if self._draining() and self.keepalived_conns and self.keepalived_conns[-1] is conn:
            conn.timeout = time.monotonic() + self.keepalive_s  # latest of all: the deque stays sorted

    def _draining(self) -> bool:
        """SIGTERM has come and the worker still accepts connections (DRAIN_S)."""
        return not self.alive and time.monotonic() < self._stop_accepting_at

    def enqueue_req(self, conn: Any) -> None:
        """gthread calls this for a request already buffered behind the one just answered
        (pipelining): the event loop reads the rest of it like any other."""
        conn.sock.setblocking(False)
        self._await_request(conn, conn.parser.unreader.take_buffered())

    def _await_request(self, conn: _Conn, pipelined: bytes = b"") -> None:
        idle = self.keepalive_s if self.alive or self._draining() else STOP_KEEPALIVE_LINGER
        conn.timeout = time.monotonic() + idle
        conn.scanned = conn.next_chunk = conn.chunked_bytes = 0
        conn.body_start = None
        self.reading[conn] = None
        if pipelined:
            self._received(conn, pipelined)
        else:
            # Most requests are there already: read at once, and poll only for the rest.
            self._on_readable(conn)
        if conn in self.reading:
            if not conn.buf:
                self.idle[conn] = None
            if not conn.polled and conn not in self.paused:
                self._poll(conn)

    def _poll(self, conn: _Conn) -> None:
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        conn.polled = True

    def _stop_reading(self, conn: _Conn) -> None:
        del self.reading[conn]
        self.idle.pop(conn, None)
        if self.large:
            self.large.pop(conn, None)
            self.paused.pop(conn, None)
        if conn.polled:
            self.poller.unregister(conn.sock)
            conn.polled = False
        self.buffered -= len(conn.buf)
        conn.buf.clear()
        if self.paused:
            self._resume()

    def _resume(self) -> None:
        """Read on the paused connections the buffer budget allows again, and always the
        one that went past BODY_BUFFER first: it is never paused, so bodies keep being
        completed (were every large body paused, none would ever finish)."""
        first = next(iter(self.large), None)
        if first in self.paused:
            del self.paused[first]
            self._poll(first)
        while self.paused and self.buffered <= self.buffer_budget:
            waiting = next(iter(self.paused))
            del self.paused[waiting]
            self._poll(waiting)

    def _on_readable(self, conn: _Conn, _fileobj: Any = None) -> None:
        if conn not in self.reading:
            return  # read to its end or closed earlier in this turn of the loop: a stale event
        try:
            data = conn.sock.recv(self._recv_size(conn))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)  # the client went away; if half-way through a request, it made none
            return
        self._received(conn, data)

    @staticmethod
    def _recv_size(conn: _Conn) -> int:
        if conn.body_length is not None and conn.body_length > 0 and conn.body_start is not None:
            missing = conn.body_start + conn.body_length - len(conn.buf)
            return min(max(missing, RECV_BYTES), MAX_RECV_BYTES)
        return RECV_BYTES

    def _received(self, conn: _Conn, data: bytes) -> None:
        if not conn.buf:
            conn.deadline = time.monotonic() + self.settings.read_timeout
            self.idle.pop(conn, None)
        conn.buf += data
        self.buffered += len(data)
        try:
            arrived = self._request_arrived(conn)
        except WarmstartError as exc:  # settled by the head alone: answered before the body
            self._answer_and_drop(conn, exc)
            return
        if arrived:
            self._dispatch(conn)
        elif len(conn.buf) > BODY_BUFFER:
            self.large.setdefault(conn)
            if self.buffered > self.buffer_budget and next(iter(self.large)) is not conn:
                if conn.polled:
                    self.poller.unregister(conn.sock)
                    conn.polled = False
                self.paused[conn] = None

    def _request_arrived(self, conn: _Conn) -> bool:
        """Whether the event loop has read the whole request, so a thread can answer it."""
        buf = conn.buf
        if conn.body_start is None:
            end = buf.find(b"\r\n\r\n", max(conn.scanned - 3, 0))
            if end < 0:
                if _bare_lf(buf, max(conn.scanned - 1, 0)):
                    raise MalformedRequest("a request line or header ends with a bare LF; end every line with CRLF")
                conn.scanned = len(buf)
                return len(buf) >= HEAD_LIMIT
            conn.body_start = conn.next_chunk = end + 4
            conn.body_length, expect = _framing(bytes(buf[:end]), self.settings.max_request_bytes)
            if expect and len(buf) == conn.body_start:
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n", socket.MSG_DONTWAIT)
                except OSError:
                    pass  # the client is gone, or will send its body anyway
        if conn.body_length is None:
            return True
        if conn.body_length == CHUNKED:
            return self._chunked_body_arrived(conn)
        return len(buf) - conn.body_start >= conn.body_length

    def _chunked_body_arrived(self, conn: _Conn) -> bool:
        """Whether the chunked body has arrived, trailers included, reading on from the
        last chunk-size line seen; 413 as soon as the chunks announce more data than
        MAX_REQUEST_BYTES, or the framing makes the body as sent more than twice that
        (tiny chunks with long extensions would otherwise fill memory). Framing that
        does not parse counts as arrived: gunicorn's parser refuses it."""
        buf, limit = conn.buf, self.settings.max_request_bytes
        if len(buf) - conn.body_start > 2 * limit + HEAD_LIMIT:
            raise body_too_large(limit)
        while conn.next_chunk < len(buf):
            eol = buf.find(b"\r\n", conn.next_chunk)
            if eol < 0:
                return len(buf) - conn.next_chunk > HEAD_LIMIT
            try:
                size = int(bytes(buf[conn.next_chunk : eol]).split(b";", 1)[0], 16)
            except ValueError:
                return True
            if size < 0:
                return True
            if size == 0:  # the last chunk: then trailer lines, if any, and an empty line
                after = eol + 2
                ended = buf.startswith(b"\r\n", after) or buf.find(b"\r\n\r\n", after) >= 0
                return ended or len(buf) - after > HEAD_LIMIT
            conn.chunked_bytes += size
            if conn.chunked_bytes > limit:
                raise body_too_large(limit)
            conn.next_chunk = eol + 2 + size + 2
        return False

    def _dispatch(self, conn: _Conn) -> None:
        """Hand a connection whose request has arrived to a thread.

        The parser gets the head and the first BODY_BUFFER bytes of body; the rest it
        takes from `conn.rest` in pieces, as it would read them from the socket: handed
        over whole, a body of megabytes was copied over and over by gunicorn's buffers
        (a 10,000-row request cost 17 ms more CPU)."""
        request, conn.buf = conn.buf, bytearray()
        self.buffered -= len(request)
        self._stop_reading(conn)
        if conn.parser is None:
            conn.init()
            conn.parser.unreader.chunk = partial(self._read_body, conn)
        split = (conn.body_start or 0) + BODY_BUFFER
        if len(request) > split:
            conn.rest = memoryview(request)[split:]
            conn.parser.unreader.unread(bytes(request[:split]))
        else:
            conn.parser.unreader.unread(bytes(request))
        # The thread makes the socket blocking (gthread's handle): doing it here as well
        # would be one more system call, which costs the interpreter lock under load.
        super().enqueue_req(conn)

    def _read_body(self, conn: _Conn, size_hint: int | None = None) -> bytes:
        """The parser's reads on a thread: the rest of what the event loop read, then
        (only for what it did not judge: an oversized head or trailers) the socket,
        bounded by the request's deadline."""
        size = conn.parser.unreader.mxchunk
        if size_hint and size_hint > size:
            size = min(size_hint, conn.parser.unreader.max_body_chunk)
        if conn.rest is not None:
            piece = conn.rest[:size].tobytes()
            conn.rest = conn.rest[size:] if len(conn.rest) > size else None
            return piece
        remaining = conn.deadline - time.monotonic()
        if remaining <= 0:
            self._time_out()
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
                self._on_readable(conn)  # a request that came since the last poll is read, not reset
                if conn in self.reading and not conn.buf:
                    self._drop(conn)
        for conn, until in list(self.lingering.items()):
            if now >= until:
                self._end_linger(conn)

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's, except that a kept-alive connection whose next request has arrived
        since the last poll is read rather than closed: closing a socket with unread
        bytes resets it, and the request that reached the server is lost. A loop held
        up past STOP_KEEPALIVE_LINGER (an overloaded host) did that on shutdown."""
        now = time.monotonic()
        while self.keepalived_conns:
            conn = self.keepalived_conns[0]
            if conn.timeout > now and not force:
                break
            if not force and _request_waiting(conn.sock):
                self.on_client_socket_readable(conn, conn.sock)
                continue
            self.keepalived_conns.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass  # already unregistered, as gthread allows
            self.nr_conns -= 1
            conn.close()

    def _drop(self, conn: _Conn, graceful: bool = False) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close(graceful)

    def _answer_and_drop(self, conn: _Conn, exc: WarmstartError) -> None:
        try:
            conn.sock.send(self.error_response(exc, _target(conn.buf)), socket.MSG_DONTWAIT)
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
        # The body is here already; the event loop sent `100 Continue` if it was awaited.
        req._expected_100_continue = False
        max_age = self.settings.connection_max_age
        if max_age and time.monotonic() - conn.opened > max_age:
            req.must_close = True
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        try:
            keepalive = super()._keepalive_after(conn, keepalive)
        except RequestTimeout:
            keepalive = False  # the unread rest of a body did not come in time
        if conn.rest is not None:
            # What follows the body is the next request (pipelining): gthread finds it
            # in the parser's buffer and gives it back to the event loop.
            if keepalive:
                conn.parser.unreader.unread(conn.rest.tobytes())
            conn.rest = None
        return keepalive

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """gunicorn's error page, as JSON with the model headers like every response."""
        status, _, message = describe_error(exc)
        if status >= 500:
            self.log.exception("error handling a request")
        else:
            log.info("refused a request from %s: %s", (addr or ("",))[0], message)
        try:
            client.sendall(self.error_response(exc, getattr(req, "path", None) or ""))
        except OSError:
            pass

    def error_response(self, exc: BaseException, path: str = "") -> bytes:
        """A complete HTTP/1.1 error response that closes the connection, worded as the
        route at `path` words its errors."""
        status, code, message = describe_error(exc)
        self.serving.metrics.traffic.refused(status)
        body = codecs.dump_json(self.serving.error_body(path, code, message))
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
        drift = self.serving.drift
        if drift is not None:
            try:
                drift.flush()  # the rows its thread has not binned yet
            except Exception:
                log.exception("drift: the rows of this worker's last %.1f s were not binned", FLUSH_S)
        # Every accepted request has been answered: what the prediction log holds goes out
        # now, within the grace period (after it, the master kills the worker).
        self.serving.close()
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
