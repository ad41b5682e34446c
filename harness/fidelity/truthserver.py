"""A lean ground-truth server for the fidelity benchmark (issue 11 §2): exact timing at 1,024 streams.

Why not the sim: at 1,024 streams × ITL 10 ms (about 100k chunks/s) the
sim's asyncio/uvloop path (a transport, a protocol, a timer handle and a
formatted log line per chunk) cannot keep time on this 2-core machine next
to the client, so it writes late, lowers the real load and the client's lag
at the load that was asked for is never exercised. This server does only what
the benchmark needs, on one thread:

* one ``epoll`` for accepts and request reads, one *timer wheel* for every
  stream's writes (buckets of ``WHEEL_NS``, each written at its middle, so a
  chunk goes out within half a bucket, 0.2 ms, of its due time, where the
  sim allows 0.1 ms early; the log keeps the real time either way);
* chunk bytes are rendered once per request shape (the OpenAI completions SSE
  the sim sends, HTTP chunked framing included) and only the request's id is
  spliced in per write; one ``send`` per chunk, on the raw socket;
* the log is binary: per chunk five int64 (request, chunk, write, due, attempt ns)
  appended to an ``array`` and dumped at shutdown (``truthlog``).

Timing is the sim's exact mode: chunk ``i`` (one token each) is due at
``arrival + ttft + i * itl``; a stream has ``max_tokens`` tokens (the
benchmark sends ``ignore_eos``). ``t_ns`` is ``time.monotonic_ns()`` right
after the chunk's last byte left for the kernel, the same clock as the client's
stamps (same host). It serves ``GET /health`` and streamed
``POST /v1/completions`` only: anything else is a 404/400, since a benchmark
that silently accepted another shape would measure the wrong thing.

``truthserver.c`` is this server ported to C, byte for byte and log for log
(``tests/test_fidelity_truth_c.py`` holds the two to each other), and the
fidelity benchmark's default truth side (``--truth c``; this one is
``--truth lean``). Why: this one costs 15-24 µs of CPU per token on a slow
2-core machine, so at 1,024 streams it needs more than a core, falls behind
its schedule and takes the CPU the client under test needs; the C one costs
about half that (its own code about 1 µs, the rest is the kernel's loopback
TCP send, the same for both). This module stays as the reference and for a machine without
gcc (chosen with ``--truth lean``: ``--truth c`` never falls back silently).
"""

from __future__ import annotations

import argparse
import heapq
import select
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import orjson

from harness.fidelity.cpushare import raise_priority
from harness.fidelity.timerfd import MonotonicTimer, tighten_timer_slack
from harness.fidelity.truthlog import TruthLogWriter
from harness.fidelity.truthsse import SSE_TYPE, Shape

WHEEL_NS = 400_000
# A bucket [k·W, (k+1)·W) is written at its middle, so a chunk goes out at most W/2 (0.2 ms) early
# or, on an idle loop, W/2 late. Measured at 1,024 streams: 100 µs buckets (0.1 ms early at most)
# cost 7.3 µs of server CPU per token, 500 µs buckets 5.7 µs: the wake-ups, not the writes, differ.
FIRE_OFFSET_NS = WHEEL_NS // 2
READ_SIZE = 65536
MAX_HEAD = 64 * 1024


class TruthServerError(RuntimeError):
    """The truth server could not start (bad flags, port in use)."""


class Stream:
    """One open streamed response: which chunk is next and when it is due."""

    __slots__ = ("conn", "rid", "oid", "parts", "i", "n", "first_due", "itl")

    def __init__(self, conn: Conn, rid: int, oid: bytes, shape: Shape, first_due: int, itl: int) -> None:
        self.conn = conn
        self.rid = rid
        self.oid = oid
        self.parts = shape.parts
        self.i = 0
        self.n = len(shape.parts)
        self.first_due = first_due
        self.itl = itl

    def due(self) -> int:
        return self.first_due + self.i * self.itl


class Conn:
    """One client connection: its socket, unparsed input, unsent output and the stream it carries."""

    __slots__ = ("sock", "send", "fd", "buf", "out", "out_logs", "stream", "read_ns", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send = sock.send
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out = bytearray()
        self.out_logs: list[int] = []  # log slots whose write time is set when ``out`` drains
        self.stream: Stream | None = None
        self.read_ns = 0
        self.closed = False


class TruthServer:
    """The event loop: accept, parse, schedule, write, log."""

    def __init__(
        self,
        port: int,
        ttft_ns: int,
        itl_ns: int,
        log: TruthLogWriter,
        model: str = "sim-model",
        congestion: str | None = None,
    ) -> None:
        self.ttft_ns, self.itl_ns = ttft_ns, itl_ns
        self.log = log
        self.model = model
        self.congestion = congestion  # why: truthserver.c, at --congestion
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.lsock.bind(("127.0.0.1", port))
        except OSError as err:
            raise TruthServerError(f"cannot listen on 127.0.0.1:{port}: {err}") from None
        if congestion:
            try:
                self.lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
            except OSError as err:
                raise TruthServerError(f"--congestion {congestion}: {err}") from None
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.lsock.fileno(), select.EPOLLIN)
        self.timer = MonotonicTimer()  # wakes the loop at the next bucket's start, to the microsecond
        self.ep.register(self.timer.fd, select.EPOLLIN)
        self.conns: dict[int, Conn] = {}
        self.wheel: dict[int, list[Stream]] = {}
        self.keys: list[int] = []  # heap of wheel bucket keys
        self.shapes: dict[tuple[bytes, int, int, bool, bool], Shape] = {}
        self.created = int(time.time())
        self.running = True

    # -- scheduling -------------------------------------------------------------------------------
    def _arm(self, s: Stream, due: int) -> None:
        key = due // WHEEL_NS
        bucket = self.wheel.get(key)
        if bucket is None:
            self.wheel[key] = [s]
            heapq.heappush(self.keys, key)
        else:
            bucket.append(s)

    def _fire_due(self) -> None:
        """Write every chunk whose bucket has started; re-arm each stream for its next chunk.

        This is the truth server's hot path (one pass per chunk at ~100k/s), so
        the common case (socket took the whole chunk) is inlined: one join, one
        ``send``, one clock read, one ``array.extend``, one bucket append.
        """
        keys, wheel, clock = self.keys, self.wheel, time.monotonic_ns
        log_chunk, log_row = self.log.chunk, self.log.chunks.extend
        pop, push, get = heapq.heappop, heapq.heappush, wheel.get
        while keys and keys[0] * WHEEL_NS + FIRE_OFFSET_NS <= clock():
            for s in wheel.pop(pop(keys)):
                conn = s.conn
                if conn.closed:
                    continue
                i = s.i
                due = s.first_due + i * s.itl
                data = s.oid.join(s.parts[i])
                if conn.out:
                    self._send(conn, data, log_chunk(s.rid, i, due, clock()))
                else:
                    try:
                        sent = conn.send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        self._close(conn)
                        continue
                    t = clock()
                    if sent == len(data):
                        log_row((s.rid, i, t, due, t))
                    else:
                        self._queue(conn, data[sent:], log_chunk(s.rid, i, due, t))
                i += 1
                s.i = i
                if i == s.n:
                    conn.stream = None
                    self.log.end_of(s.rid, clock())
                    if conn.buf:
                        self._parse(conn)
                    continue
                key = (due + s.itl) // WHEEL_NS
                bucket = get(key)
                if bucket is None:
                    wheel[key] = [s]
                    push(keys, key)
                else:
                    bucket.append(s)

    # -- I/O ----------------------------------------------------------------------------------------
    def _send(self, conn: Conn, data: bytes, slot: int) -> None:
        if conn.out:
            conn.out += data
            if slot >= 0:
                conn.out_logs.append(slot)
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent == len(data):
            if slot >= 0:
                self.log.set_time(slot, time.monotonic_ns())
            return
        self._queue(conn, data[sent:], slot)

    def _queue(self, conn: Conn, rest: bytes, slot: int) -> None:
        """The socket is full: keep ``rest`` until EPOLLOUT; the chunk's write time is set when it drains."""
        conn.out += rest
        if slot >= 0:
            conn.out_logs.append(slot)
        self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if not conn.out:
            now = time.monotonic_ns()
            for slot in conn.out_logs:
                self.log.set_time(slot, now)
            conn.out_logs.clear()
            self.ep.modify(conn.fd, select.EPOLLIN)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.stream is not None:
            self.log.end_of(conn.stream.rid, time.monotonic_ns(), gone=True)
            conn.stream = None
        self.conns.pop(conn.fd, None)
        try:
            self.ep.unregister(conn.fd)
        except OSError:
            pass
        conn.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.congestion:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.congestion.encode())
            conn = Conn(sock)
            self.conns[conn.fd] = conn
            self.ep.register(conn.fd, select.EPOLLIN)

    def _read(self, conn: Conn) -> None:
        now = time.monotonic_ns()
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.read_ns = now
        conn.buf += data
        if conn.stream is None:
            self._parse(conn)

    def _respond(self, conn: Conn, status: bytes, body: bytes) -> None:
        head = b"HTTP/1.1 %s\r\nserver: tokenbench-truth\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        self._send(conn, head % (status, len(body)) + body, -1)

    def _parse(self, conn: Conn) -> None:
        """Handle one complete request in ``conn.buf`` (the client sends one at a time per connection)."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._close(conn)
            return
        lines = bytes(buf[:end]).split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0") or 0)
        total = end + 4 + length
        if len(buf) < total:
            return
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        parts = lines[0].split(b" ")
        method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) == 3 else (b"", b"")
        if method == b"GET" and path == b"/health":
            self._respond(conn, b"200 OK", b'{"status":"ok"}')
        elif method == b"POST" and path == b"/v1/completions":
            self._start(conn, headers, body)
        else:
            self._respond(conn, b"404 Not Found", b'{"error":"the truth server serves /v1/completions"}')

    def _start(self, conn: Conn, headers: dict[bytes, bytes], body: bytes) -> None:
        arrival = conn.read_ns
        try:
            req = orjson.loads(body)
            prompt = req["prompt"]
            n = int(req["max_tokens"])
            opts = req.get("stream_options") or {}
            usage, cont = bool(opts.get("include_usage")), bool(opts.get("continuous_usage_stats"))
            ok = bool(req.get("stream")) and n >= 1 and isinstance(prompt, str)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):  # ([1].get: a 400)
            ok = False
        if not ok:
            self._respond(
                conn,
                b"400 Bad Request",
                b'{"error":"truth server: streamed completions with a string prompt and max_tokens only"}',
            )
            return
        p = len(prompt.split())
        model = orjson.dumps(str(req.get("model") or self.model))
        key = (model, p, n, usage, cont)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = Shape(model, self.created, p, n, usage, cont)
        rid_text = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = self.log.arrival_of(rid_text, arrival, p)
        s = Stream(
            conn, rid, b"cmpl-" + uuid.uuid4().hex.encode(), shape, arrival + self.ttft_ns, self.itl_ns
        )
        conn.stream = s
        self._send(
            conn,
            b"HTTP/1.1 200 OK\r\nserver: tokenbench-truth\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
            % SSE_TYPE,
            -1,
        )
        self._arm(s, s.first_due)

    # -- loop ---------------------------------------------------------------------------------------
    def serve(self) -> None:
        poll, conns, lfd = self.ep.poll, self.conns, self.lsock.fileno()
        timer = self.timer
        tfd = timer.fd
        keys = self.keys
        while self.running:
            self._fire_due()
            if keys:
                at = keys[0] * WHEEL_NS + FIRE_OFFSET_NS
                if at != timer.armed_ns:
                    timer.arm(at)
            events = poll(0.2)  # the timer ends the wait; 0.2 s only bounds a shutdown signal's delay
            for fd, ev in events:
                if fd == lfd:
                    self._accept()
                    continue
                if fd == tfd:
                    timer.clear()
                    continue
                conn = conns.get(fd)
                if conn is None:
                    continue
                if ev & select.EPOLLOUT:
                    self._flush(conn)
                if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not conn.closed:
                    self._read(conn)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        self.ep.close()
        self.timer.close()
        self.lsock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.fidelity.truthserver", description=__doc__.split("\n")[0]
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--log", type=Path, required=True, help="binary truth log, written at shutdown (SIGTERM)")
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="scheduling niceness to ask for (default -10; best effort, kept at 0 without the privilege)",
    )
    p.add_argument(
        "--congestion",
        default=None,
        help="TCP congestion control for every connection (e.g. reno; default: the system's)",
    )
    args = p.parse_args(argv)
    tighten_timer_slack()
    log = TruthLogWriter()
    log.nice = raise_priority(args.nice)
    try:
        server = TruthServer(
            args.port, int(args.ttft_ms * 1e6), int(args.itl_ms * 1e6), log, congestion=args.congestion
        )
    except TruthServerError as err:
        print(f"truth server: {err}", file=sys.stderr)
        return 1

    def stop(_sig: int, _frame: object) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"truth server on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve()
    finally:
        server.close()
        log.dump(args.log, cpu_s=time.process_time())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
