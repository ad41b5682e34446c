"""One keep-alive HTTP/1.1 connection per load user, built for timing streamed responses.

Why not Locust's ``FastHttpSession`` or geventhttpclient's ``HTTPClient``:

* both buffer the body until a block is full, so the moment a token arrived
  would be lost; here every ``recv`` is stamped with ``time.monotonic_ns()``
  before anything else happens (the chunked framing is undone by
  geventhttpclient's C parser, the SSE framing later by ``sseframe``);
* geventhttpclient's pool checks a reused connection with a gevent
  ``select(..., 0)``, which *yields to the hub* between the moment the request
  was stamped as sent and the moment its bytes are written. Under closed-loop
  load, where hundreds of streams end together, that yield put tens of ms of
  other users' work inside the measured TTFT (issue 3, fidelity at 256
  streams). Here the liveness check is one non-blocking ``MSG_PEEK`` and
  ``sent_ns`` is stamped right before ``sendall``, with nothing in between
  that can switch greenlets.

The request head (request line and fixed headers) is rendered once per user
(``request_prefix``); per request only the id and length are appended. Header
values are checked for line breaks so a bad value cannot inject headers; the
error names the header, never its value (it may be a secret).

This module imports gevent but not Locust (which monkey-patches on import),
so it is usable and testable outside a Locust process.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.socket
import gevent.ssl
from geventhttpclient.response import HTTPParseError, HTTPResponse

from harness.load.bounds import Bounds, ResponseTooLarge
from harness.load.httphead import retry_after
from harness.load.nativehttp import Chain, is_final, read_native
from harness.load.nativeread import NativeReader
from harness.load.sseframe import SseSplitter
from harness.protocols.base import TlsOptions
from harness.protocols.tls import ssl_context

READ_SIZE = 64 * 1024
ERROR_BODY_CHARS = 500
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


@dataclass
class Outcome:
    """Raw result of one HTTP exchange, before interpretation.

    ``sent_ns`` is stamped right before the request bytes are written (after
    any connection set-up), so it is the same event a server's arrival stamp
    refers to, less the loopback transit.
    """

    status: int
    sent_ns: int
    end_ns: int
    splitter: SseSplitter
    error_class: str | None = None
    error_message: str | None = None
    body_bytes: int = 0
    retry_after: str | None = None  # a 429/503's Retry-After header, as sent


class _Deadline(Exception):
    """The whole request ran past ``timeout_s``."""


class _ClosedEarly(Exception):
    """The server closed the connection before the response headers were complete."""


class StreamClient:
    """One user's connection to one server (plain HTTP or HTTPS), reused while the server keeps it alive."""

    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float,
        tls: TlsOptions | None = None,
        bounds: Bounds | None = None,
        reader: NativeReader | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url {base_url!r}: expected http(s)://host[:port][/prefix]")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = url.scheme == "https"
        self.connect_timeout_s = connect_timeout_s
        options = tls or TlsOptions()
        # CA bundle / skip-verify / server name: the same rules as the readiness probes (protocols.tls).
        self._ssl_ctx: ssl.SSLContext | None = (
            ssl_context(options, gevent.ssl.create_default_context) if self.tls else None
        )
        self._server_name = options.server_name or self.host
        self.bounds = bounds or Bounds()
        self.reader = None if self.tls else reader  # TLS records are decrypted in Python: its own path
        self._sock: Any = None
        self.connect_ns: int | None = None  # the last request's connect time (None: reused)

    def chain_sent(self) -> tuple[int, int] | None:
        """Whether the reader thread sent the oldest chained request: (its send stamp, bytes sent), or None."""
        if self.reader is None or self._sock is None:
            return None
        return self.reader.chain_result(self._sock.fileno())

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self.reader is not None:
                self.reader.drop(sock.fileno())  # before the fd number can be reused
            try:
                sock.close()
            except OSError:
                pass

    def _connect(self) -> Any:
        start = time.monotonic_ns()
        try:
            return self._open()
        finally:
            self.connect_ns = time.monotonic_ns() - start  # failed connects are timed too

    def _open(self) -> Any:
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_ctx is not None:
                sock = self._ssl_ctx.wrap_socket(sock, server_hostname=self._server_name)
            sock.settimeout(None)  # the request as a whole is under one gevent.Timeout
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def _reusable(self) -> Any:
        """The kept connection if the server has not closed it (one non-blocking peek, no yield)."""
        sock = self._sock
        if sock is None:
            return None
        raw = getattr(sock, "_sock", None)
        try:
            if raw is None:
                return sock  # nothing to peek at: trust it, a failure shows up as an error
            raw.recv(1, _PEEK)  # returned: b"" (the server closed) or stray bytes
        except BlockingIOError:
            if not (self.tls and sock.pending()):
                return sock  # idle and open: the only reusable state
        except OSError:
            pass
        self.close()
        return None

    def post(
        self,
        head: bytes,
        body: bytes,
        timeout_s: float,
        chains: Sequence[Chain] = (),
        sent: tuple[int, int] | None = None,
    ) -> Outcome:
        """Send one request and read the response, stamping every read; never raises for network errors.

        Error classes: no connection within the connect or request deadline is
        ``connect_timeout`` (the server never took the request); a deadline
        after that is ``timeout``; a response past ``bounds`` is
        ``stream_too_large`` (its body is dropped and the connection closed).
        Afterwards ``connect_ns`` is the time it spent connecting (None: it reused the kept connection).
        Closed loop on the native reader: ``chains`` are the next requests, for
        the reader thread to send in order as responses end (``chain_sent``
        says whether it did), and ``sent`` marks a request the thread sent
        (its stamp and the bytes it got out; the rest is sent here).
        """
        self.connect_ns = None
        splitter = SseSplitter()
        clock = time.monotonic_ns
        sent_ns = clock() if sent is None else sent[0]
        parser = HTTPResponse("POST")
        keep = False
        connecting = True
        if sent is not None:  # the request's deadline runs from the thread's send
            timeout_s = max(0.0, timeout_s - (clock() - sent_ns) / 1e9)
        try:
            with gevent.Timeout(timeout_s, _Deadline):
                if sent is None:
                    sock = self._reusable() or self._connect()
                    connecting = False
                    sent_ns = clock()
                    sock.sendall(head + body)
                else:
                    sock, connecting = self._sock, False
                    if sent[1] < len(head) + len(body):
                        sock.sendall((head + body)[sent[1] :])
                status, last_read_ns = _read_response(
                    sock,
                    parser,
                    splitter,
                    clock,
                    self.tls,
                    self.bounds,
                    self.reader,
                    chains,
                    sent is not None,
                )
                end_ns = last_read_ns if last_read_ns is not None else clock()
                keep = parser.message_complete and not parser.should_close()
                if status >= 400:
                    text = splitter.head(ERROR_BODY_CHARS).decode("utf-8", "replace")
                    cls = "http_4xx" if status < 500 else "http_5xx"
                    return Outcome(
                        status,
                        sent_ns,
                        end_ns,
                        splitter,
                        cls,
                        f"HTTP {status}: {text}",
                        retry_after=retry_after(parser, status),
                    )
                return Outcome(status, sent_ns, end_ns, splitter, body_bytes=splitter.size)
        except (_Deadline, TimeoutError) as err:
            msg = f"no complete response within {timeout_s:g} s" if isinstance(err, _Deadline) else _msg(err)
            if connecting:
                msg = f"no connection to {self.host}:{self.port} established: {msg}"
                return Outcome(0, sent_ns, clock(), splitter, "connect_timeout", msg)
            return Outcome(_status(parser), sent_ns, clock(), splitter, "timeout", msg)
        except ResponseTooLarge as err:
            size = splitter.size
            return Outcome(
                _status(parser),
                sent_ns,
                clock(),
                SseSplitter(),
                "stream_too_large",
                str(err),
                body_bytes=size,
            )
        except _ClosedEarly as err:
            return Outcome(0, sent_ns, clock(), splitter, "connect", _msg(err))
        except (HTTPParseError, OSError) as err:
            if not parser.headers_complete:
                return Outcome(0, sent_ns, clock(), splitter, "connect", _msg(err))
            if isinstance(err, HTTPParseError):
                msg = f"HTTP framing: {_msg(err)}"
                return Outcome(_status(parser), sent_ns, clock(), splitter, "bad_payload", msg)
            return Outcome(_status(parser), sent_ns, clock(), splitter, "stream_broken", _msg(err))
        finally:
            if not keep:
                self.close()

    def probe(self, head: bytes | None, timeout_s: float) -> str | None:
        """Open the connection and prove it usable with one bodiless request (``head``); why not, or None.

        Used by the prewarm (``harness.load.prewarm``) before the step's clock
        starts: the answer's status does not matter (a 404 still proves the
        server accepted and served this connection), only that a complete
        response came back and the server keeps the connection open. Without
        a ``head`` (a protocol with no HTTP readiness path) the check is the
        connect and the non-blocking peek of ``_reusable``. ``connect_ns``
        holds the connect time afterwards.
        """
        self.connect_ns = None
        parser = HTTPResponse("GET")
        try:
            with gevent.Timeout(timeout_s, _Deadline):
                sock = self._reusable() or self._connect()
                if head is None:
                    return None if self._reusable() is not None else "the server closed the connection"
                sock.sendall(head)
                while not (parser.message_complete and is_final(parser)):
                    data = sock.recv(READ_SIZE)
                    if not data:
                        raise _ClosedEarly("connection closed before the probe's response was complete")
                    parser.feed(data)
                    parser._body_buffer.clear()
        except _Deadline:
            self.close()
            return f"no probe response within {timeout_s:g} s"
        except (_ClosedEarly, HTTPParseError, OSError) as err:
            self.close()
            return _msg(err)
        if parser.should_close():
            self.close()
            return f"the server closes the connection after a request (HTTP {parser.get_code()})"
        return None


def _status(parser: HTTPResponse) -> int:
    return parser.get_code() if parser.headers_complete else 0


def _read_response(
    sock: Any,
    parser: HTTPResponse,
    splitter: SseSplitter,
    clock: Callable[[], int],
    tls: bool,
    bounds: Bounds,
    reader: NativeReader | None = None,
    chains: Sequence[Chain] = (),
    attach: bool = False,
) -> tuple[int, int | None]:
    """Read until the response is complete or the server closes: the status, and the reader thread's
    stamp of the last read (None on the Python path). Raises on errors.

    Per read only: wait, ``recv``, stamp, the C parser, and an append of the
    body bytes with the stamp. Two costs per token are avoided on plain
    sockets (measured with py-spy at 256 streams): the failing ``recv``
    (syscall plus ``EWOULDBLOCK`` exception) that precedes every gevent wait,
    by waiting for readability first and then reading the raw socket once; and
    any per-read timeout arming (the socket has none; the request is under one
    ``gevent.Timeout``). TLS sockets use the public ``recv``, since decrypted
    bytes may already be buffered in the TLS layer. The response bound costs
    two integer subtractions and compares per read, after the stamp.
    """
    buf: bytearray = parser._body_buffer
    feed = parser.feed
    feed_splitter = splitter.feed
    raw = None if tls else getattr(sock, "_sock", None)
    last: int | None = None
    if raw is None:
        recv = sock.recv
        bytes_left, reads_left = bounds.max_bytes, bounds.max_reads
        while True:
            data = recv(READ_SIZE)
            now = clock()
            if not data:
                break
            bytes_left -= len(data)
            reads_left -= 1
            if bytes_left < 0 or reads_left < 0:
                raise ResponseTooLarge(
                    bounds.message(bounds.max_bytes - bytes_left, bounds.max_reads - reads_left)
                )
            feed(data)
            if buf:
                feed_splitter(buf, now)
                buf.clear()
            if parser.message_complete and is_final(parser):
                break
    elif reader is not None:
        read_on = lambda rest: _read_plain(raw, parser, feed_splitter, clock, rest)  # noqa: E731
        last = read_native(reader, raw, parser, splitter, bounds, read_on, chains, attach)
    else:
        _read_plain(raw, parser, feed_splitter, clock, bounds)
    if not parser.headers_complete:
        raise _ClosedEarly("connection closed before the response headers")
    return int(parser.get_code()), last


def _read_plain(
    raw: socket.socket,
    parser: HTTPResponse,
    feed_splitter: Callable[[bytearray, int], None],
    clock: Callable[[], int],
    bounds: Bounds,
) -> None:
    """The hot loop on a plain socket: one persistent read watcher whose callback resumes this greenlet.

    Why not the gevent socket's own ``recv``: per read it tries a ``recv``
    that fails (syscall plus ``EWOULDBLOCK``), then builds a waiter, starts a
    watcher, switches to the hub, and stops the watcher again. Here the
    watcher lives for the whole response: the loop switches to the hub, the
    hub switches straight back when the socket is readable, and one ``recv``
    follows. Nothing else in this loop can switch greenlets, so the only way
    back in is that callback (or the request's ``gevent.Timeout``, which
    raises out of ``hub.switch`` and stops the watcher in ``finally``).
    """
    buf: bytearray = parser._body_buffer
    feed = parser.feed
    recv = raw.recv
    hub = gevent.get_hub()
    to_hub = hub.switch
    watcher = hub.loop.io(raw.fileno(), 1)
    watcher.start(gevent.getcurrent().switch)
    bytes_left, reads_left = bounds.max_bytes, bounds.max_reads
    try:
        while True:
            to_hub()
            try:
                data = recv(READ_SIZE)
            except BlockingIOError:
                continue  # woke without data (spurious readiness): wait again
            now = clock()
            if not data:
                return
            bytes_left -= len(data)
            reads_left -= 1
            if bytes_left < 0 or reads_left < 0:
                raise ResponseTooLarge(
                    bounds.message(bounds.max_bytes - bytes_left, bounds.max_reads - reads_left)
                )
            feed(data)
            if buf:
                feed_splitter(buf, now)
                buf.clear()
            if parser.message_complete and is_final(parser):
                return
    finally:
        watcher.stop()
        watcher.close()


def _msg(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:ERROR_BODY_CHARS]
