"""The native stream reader against the Python read path: the same outcome for every response framing.

The reader thread only decides when a response is over; these tests pin that
it decides the same as the HTTP parser for each framing a server may use
(chunked split anywhere, coalesced chunks, trailers, extensions, interim 1xx,
Content-Length, close-delimited, 204, broken framing, a close mid-body), and
that the connection is then reused or dropped alike. Each response is sent
in pieces with pauses, so the pieces arrive as separate reads.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from harness.cbuild import CC_ENV
from harness.load.bounds import Bounds
from harness.load.httphead import finish_head, request_prefix
from harness.load.httpstream import Outcome, StreamClient
from harness.load.nativehttp import Chain
from harness.load.nativeread import (
    CHAIN_MAX,
    TOO_LARGE,
    NativeReader,
    default_threads,
    open_reader,
    python_clock_offset,
)

PAUSE_S = 0.015
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the socket module does not name it
EV1 = b'data: {"choices":[{"text":"a","finish_reason":null}]}\n\n'
EV2 = b'data: {"choices":[{"text":"b","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(p: bytes, ext: bytes = b"", upper: bool = False) -> bytes:
    size = (b"%X" if upper else b"%x") % len(p)
    return size + ext + b"\r\n" + p + b"\r\n"


WHOLE = _chunk(EV1) + _chunk(EV2) + b"0\r\n\r\n"

# name -> the pieces of one response (each written after a pause), and whether the server keeps the connection
CASES: dict[str, tuple[list[bytes], bool]] = {
    "chunk per write": ([SSE, _chunk(EV1), _chunk(EV2), b"0\r\n\r\n"], True),
    "head and body in one write": ([SSE + WHOLE], True),
    "split in size line, data and CRLF": (
        [SSE, WHOLE[:1], WHOLE[1:9], WHOLE[9:60], WHOLE[60:62], WHOLE[62:-3], WHOLE[-3:]],
        True,
    ),
    "coalesced chunks": ([SSE, _chunk(EV1) + _chunk(EV1) + _chunk(EV2), b"0\r\n\r\n"], True),
    "trailers": ([SSE, _chunk(EV1), _chunk(EV2) + b"0\r\nX-Trailer: 1\r\n\r\n"], True),
    "extensions and upper-case hex": ([SSE, _chunk(EV1, b";x=1", True), _chunk(EV2) + b"0\r\n\r\n"], True),
    "interim 100 then 200": ([b"HTTP/1.1 100 Continue\r\n\r\n", SSE + _chunk(EV2) + b"0\r\n\r\n"], True),
    "content-length error": ([b'HTTP/1.1 429 Too Many\r\ncontent-length: 12\r\n\r\n{"e":', b'"slow"}'], True),
    "204": ([b"HTTP/1.1 204 No Content\r\n\r\n"], True),
    "close-delimited": ([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + EV1, EV2], False),
    "connection close header": ([SSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n") + WHOLE], False),
    "bad chunk size": ([SSE, b"zz\r\n" + EV1], False),
    "close mid-body": ([SSE, _chunk(EV1)[:20]], False),
}
# The cases the thread must see to their end itself; the rest end by a close or an error and are replayed.
REPLAYED = {"close-delimited", "bad chunk size", "close mid-body"}


class PiecesServer:
    """Per connection: read a request, send the case's pieces with pauses; serve ``serves`` requests if kept."""

    def __init__(self, pieces: list[bytes], keep: bool, hold_s: float = 0.0, serves: int = 2) -> None:
        self.pieces, self.keep, self.hold_s, self.serves = pieces, keep, hold_s, serves
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.requests: list[tuple[int, bytes]] = []  # (monotonic ns when read, X-Request-Id) per request
        threading.Thread(target=self._serve, daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            part = conn.recv(65536)
            if not part:
                return False
            data += part
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        rid = (
            head.lower().split(b"x-request-id: ")[1].split(b"\r\n")[0]
            if b"x-request-id" in head.lower()
            else b""
        )
        self.requests.append((time.monotonic_ns(), rid))
        return True

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    for _ in range(self.serves if self.keep else 1):
                        if not self._read_request(conn):
                            break
                        for piece in self.pieces:
                            time.sleep(PAUSE_S)
                            conn.sendall(piece)
                        time.sleep(self.hold_s)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def reader() -> Iterator[NativeReader]:
    made, kind = open_reader()
    assert made is not None, kind  # gcc is on every machine this suite runs on
    yield made
    made.close()


BODY = b'{"prompt":"hi"}'


def _request(url: str, rid: str) -> bytes:
    prefix = request_prefix(url, "/v1/completions", {"Content-Type": "application/json"})
    return finish_head(prefix, rid, len(BODY))


def _post(client: StreamClient, url: str, rid: str, chains: Sequence[Chain] = ()) -> Outcome:
    return client.post(_request(url, rid), BODY, timeout_s=3.0, chains=chains)


def _facts(out: Outcome, client: StreamClient) -> tuple[object, ...]:
    events = out.splitter.events
    return (
        out.status,
        out.error_class,
        [raw for _, raw in events],
        out.splitter.coalesced,
        out.splitter.close(),
        out.body_bytes,
        client._sock is not None,
    )


def _stamps_ok(out: Outcome) -> bool:
    stamps = [t for t, _ in out.splitter.events]
    return stamps == sorted(stamps) and all(out.sent_ns <= t <= out.end_ns for t in stamps)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_native_reader_ends_and_reuses_like_the_python_path(case: str, reader: NativeReader) -> None:
    pieces, keep = CASES[case]
    seen = []
    whole, replayed = reader.whole, reader.replayed
    for native in (False, True):
        server = PiecesServer(pieces, keep)
        client = StreamClient(server.url, 2.0, reader=reader if native else None)
        try:
            first = _post(client, server.url, "r-0")
            facts = [_facts(first, client)]
            assert _stamps_ok(first), case
            second = _post(client, server.url, "r-1")  # on the kept connection, or a new one
            facts.append(_facts(second, client))
            seen.append((facts, server.accepted))
        finally:
            client.close()
            server.close()
    (py_facts, py_accepted), (native_facts, native_accepted) = seen
    assert native_facts == py_facts, case
    assert native_accepted == py_accepted == (1 if keep else 2), case
    if case in REPLAYED:
        assert reader.replayed - replayed == 2, case
    else:  # no fallback hid a wrong end: the thread's own framing found both ends
        assert (reader.whole - whole, reader.replayed - replayed) == (2, 0), case


def test_a_stream_read_natively_is_stamped_per_read_and_its_partial_data_kept_at_a_deadline(
    reader: NativeReader,
) -> None:
    server = PiecesServer([SSE, _chunk(EV1), _chunk(EV1)], keep=False, hold_s=1.0)  # cut by the deadline
    client = StreamClient(server.url, 2.0, reader=reader)
    prefix = request_prefix(server.url, "/v1/completions", {})
    out = client.post(finish_head(prefix, "t", 2), b"{}", timeout_s=0.3)
    assert out.error_class == "timeout" and out.status == 200
    stamps = [t for t, _ in out.splitter.events]
    assert len(stamps) == 2 and stamps[0] < stamps[1]  # two reads, two stamps, kept past the deadline
    assert client._sock is None
    client.close()
    server.close()


def test_without_a_compiler_or_when_told_the_python_path_is_used_and_named(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TOKENBENCH_READER", "python")
    made, kind = open_reader(tmp_path)
    assert made is None and kind == "python (TOKENBENCH_READER=python)"
    monkeypatch.delenv("TOKENBENCH_READER")
    monkeypatch.setenv(CC_ENV, "/nonexistent/cc")
    made, kind = open_reader(tmp_path)
    assert made is None and kind.startswith("python (native reader unavailable: cannot build nativeread.c")
    assert not list((tmp_path / "bin").glob("*.so"))


def test_the_reader_threads_scheduling_is_asked_for_and_reported(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TOKENBENCH_READER_SCHED", "normal")
    made, kind = open_reader()
    assert made is not None and not made.fifo and kind == f"native (reader thread nice {made.nice})"
    assert made.cpu_s() >= 0.0
    made.close()
    monkeypatch.setenv("TOKENBENCH_READER_SCHED", "sometimes")
    made, kind = open_reader()
    assert made is None
    assert "TOKENBENCH_READER_SCHED: expected one of ['fifo', 'nice', 'normal'], got 'sometimes'" in kind
    monkeypatch.delenv("TOKENBENCH_READER_SCHED")
    for bad in ("2000000", "-1", "soon"):  # the sleep after each batch: 0 to 100 ms, or a named refusal
        monkeypatch.setenv("TOKENBENCH_READER_POLL_US", bad)
        made, kind = open_reader()
        assert made is None and kind.startswith(
            "python (native reader unavailable: TOKENBENCH_READER_POLL_US"
        ), kind


def test_reader_threads_share_the_sockets_by_fd_and_their_count_is_checked(monkeypatch) -> None:
    """Each socket is read by thread ``fd % threads``: responses on both threads, their reads counted together."""
    made, kind = open_reader(streams=1)
    assert made is not None and made.threads == 1 and "(reader thread " in kind
    made.close()
    monkeypatch.setenv("TOKENBENCH_READER_THREADS", "2")
    made, kind = open_reader(streams=1)
    assert made is not None and made.threads == 2 and kind.startswith("native (2 reader threads "), kind
    server = PiecesServer(CASES["chunk per write"][0], keep=False)
    clients = [StreamClient(server.url, 2.0, reader=made) for _ in range(4)]
    try:
        outs = [_post(client, server.url, f"r-{k}") for k, client in enumerate(clients)]
        fds = {client._sock.fileno() % 2 for client in clients if client._sock is not None}
        assert all(out.error_class is None and len(out.splitter.events) == 3 for out in outs)
        assert fds == {0, 1}  # four sockets open at once: both threads had some
        per_thread = made.stamps()["per_thread"]
        assert len(per_thread) == 2 and min(per_thread) >= 4 and made.whole == 4
    finally:
        for client in clients:
            client.close()
        server.close()
        made.close()
    for bad in ("0", "9", "two"):
        monkeypatch.setenv("TOKENBENCH_READER_THREADS", bad)
        made, kind = open_reader()
        assert made is None and "TOKENBENCH_READER_THREADS: expected" in kind, kind


def test_a_thread_per_512_streams_by_default_at_most_one_per_core(monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert [default_threads(n) for n in (1, 512, 513, 1024, 4096)] == [1, 1, 2, 2, 2]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert [default_threads(n) for n in (1024, 2048, 100_000)] == [2, 4, 8]


def test_the_threads_stamps_follow_a_shifted_process_clock(monkeypatch, reader: NativeReader) -> None:
    """The distributed tests shift ``time.monotonic_ns`` to play another host; the thread's stamps follow."""
    assert python_clock_offset() == 0
    real = time.monotonic_ns
    monkeypatch.setattr(time, "monotonic_ns", lambda: real() + 5_000_000_000)
    assert abs(python_clock_offset() - 5_000_000_000) < 1_000_000
    shifted, _ = open_reader()
    assert shifted is not None
    server = PiecesServer(CASES["chunk per write"][0], keep=False)
    client = StreamClient(server.url, 2.0, reader=shifted)
    out = _post(client, server.url, "r-0")
    assert out.error_class is None and _stamps_ok(out)  # sent_ns/end_ns (shifted) bracket the thread's stamps
    client.close()
    server.close()
    shifted.close()


def _chain(url: str, rid: str, deadline_s: float = 10.0) -> Chain:
    return Chain(_request(url, rid) + BODY, time.monotonic_ns() + int(deadline_s * 1e9))


@contextmanager
def _kept(reader: NativeReader, serves: int = 2) -> Iterator[tuple[PiecesServer, StreamClient]]:
    """A kept-alive server of ``serves`` chunk-per-write responses and a native-reader client, both closed after."""
    server = PiecesServer(CASES["chunk per write"][0], keep=True, serves=serves)
    client = StreamClient(server.url, 2.0, reader=reader)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


def test_a_chained_request_is_sent_by_the_thread_the_moment_the_response_ends(reader: NativeReader) -> None:
    """Closed loop: the next request reaches the server while Python is still busy elsewhere."""
    server = PiecesServer(CASES["chunk per write"][0], keep=True)
    client = StreamClient(server.url, 2.0, reader=reader)
    try:
        first = _post(client, server.url, "r-0", chains=[_chain(server.url, "r-1")])
        assert first.error_class is None and first.status == 200
        time.sleep(0.2)  # Python does nothing: the thread sent r-1 at the end of r-0 by itself
        assert [rid for _, rid in server.requests] == [b"r-0", b"r-1"]
        sent = client.chain_sent()
        assert sent is not None
        sent_ns, sent_bytes = sent
        assert sent_bytes == len(_request(server.url, "r-1") + BODY)
        # the send came after the last read of r-0 (its end stamp) and before the server read it
        assert first.end_ns <= sent_ns <= server.requests[1][0]
        assert server.requests[1][0] - first.end_ns < 150e6  # not at the pause's end: at once
        second = client.post(_request(server.url, "r-1"), BODY, timeout_s=3.0, sent=sent)
        assert second.error_class is None and second.sent_ns == sent_ns
        assert _facts(second, client) == _facts(first, client)
        assert _stamps_ok(second)
        assert server.accepted == 1  # the kept connection carried both
        assert client.chain_sent() is None  # nothing armed with r-1
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("why", ["deadline passed", "server closes"])
def test_a_chain_is_not_sent_past_its_deadline_or_on_a_closing_connection(
    reader: NativeReader, why: str
) -> None:
    """The thread sends only what the step would admit, and only on a connection the server keeps."""
    pieces = CASES["connection close header" if why == "server closes" else "chunk per write"][0]
    # The server reads on after its "connection: close": a chain the thread sent would show up here.
    server = PiecesServer(pieces, keep=True)
    client = StreamClient(server.url, 2.0, reader=reader)
    try:
        deadline_s = -0.001 if why == "deadline passed" else 10.0
        first = _post(client, server.url, "r-0", chains=[_chain(server.url, "r-1", deadline_s)])
        assert first.error_class is None
        time.sleep(0.1)
        assert client.chain_sent() is None
        assert [rid for _, rid in server.requests] == [b"r-0"]
        second = _post(client, server.url, "r-1")  # the user sends it itself, as without a chain
        assert second.error_class is None and [rid for _, rid in server.requests] == [b"r-0", b"r-1"]
    finally:
        client.close()
        server.close()


def test_chained_requests_go_out_in_order_each_the_moment_the_response_before_it_ends(
    reader: NativeReader,
) -> None:
    """Two ahead: the thread sends r-1 at r-0's end and r-2 at r-1's, while Python takes nothing."""
    with _kept(reader, serves=3) as (server, client):
        first = _post(
            client, server.url, "r-0", chains=[_chain(server.url, "r-1"), _chain(server.url, "r-2")]
        )
        time.sleep(0.4)  # r-1's response (three pauses) is over too: r-2 went out without Python
        assert [rid for _, rid in server.requests] == [b"r-0", b"r-1", b"r-2"]
        outs = [first]
        for rid in ("r-1", "r-2"):
            sent = client.chain_sent()
            assert sent is not None and sent[1] == len(_request(server.url, rid) + BODY)
            assert outs[-1].end_ns <= sent[0]  # after the response before it ended ...
            outs.append(client.post(_request(server.url, rid), BODY, timeout_s=3.0, sent=sent))
            assert outs[-1].error_class is None and outs[-1].sent_ns == sent[0]
        # ... and at once: each reached the server well before Python took the response before it
        assert all(server.requests[k][0] - outs[k - 1].end_ns < 150e6 for k in (1, 2))
        assert [_facts(out, client) for out in outs[1:]] == [_facts(first, client)] * 2
        assert server.accepted == 1
        assert client.chain_sent() is None


@pytest.mark.parametrize("late", ["first", "second"])
def test_a_chain_that_may_not_go_takes_every_one_after_it_with_it(reader: NativeReader, late: str) -> None:
    """Past its deadline, a chained request is not sent, nor any behind it: they would go out of order."""
    with _kept(reader, serves=3) as (server, client):
        deadlines = (-0.001, 10.0) if late == "first" else (10.0, -0.001)
        chains = [_chain(server.url, f"r-{k + 1}", deadline_s) for k, deadline_s in enumerate(deadlines)]
        _post(client, server.url, "r-0", chains=chains)
        time.sleep(0.4)
        if late == "second":
            sent = client.chain_sent()
            assert sent is not None
            assert (
                client.post(_request(server.url, "r-1"), BODY, timeout_s=3.0, sent=sent).error_class is None
            )
        assert client.chain_sent() is None
        assert client.chain_sent() is None  # the one after it went with it
        assert [rid for _, rid in server.requests] == [b"r-0", b"r-1"][: 2 if late == "second" else 1]


def test_a_connection_takes_at_most_chain_max_requests_ahead(reader: NativeReader) -> None:
    with _kept(reader) as (server, client):
        chains = [_chain(server.url, f"r-{k + 1}") for k in range(CHAIN_MAX + 1)]
        out = _post(client, server.url, "r-0", chains=chains)
        assert out.error_class is not None and "cannot arm" in (out.error_message or ""), out


def test_a_closed_connection_forgets_its_chain_and_the_fd_is_reusable(reader: NativeReader) -> None:
    server = PiecesServer(CASES["chunk per write"][0], keep=True)
    client = StreamClient(server.url, 2.0, reader=reader)
    try:
        _post(client, server.url, "r-0", chains=[_chain(server.url, "r-1")])
        time.sleep(0.05)
        client.close()  # the chained response is being read: the thread lets go of the fd first
        again = _post(client, server.url, "r-2")  # a new connection, likely on the same fd number
        assert again.error_class is None and again.status == 200
        assert len(again.splitter.events) == 3
    finally:
        client.close()
        server.close()


def test_a_response_cut_as_too_large_hands_python_its_head_not_its_bytes(reader: NativeReader) -> None:
    """Past the bound the thread stops; Python gets the status and the sizes, and no copy of the body
    (under an endless stream that copy was most of the client's memory), on the client path alike."""
    pieces = [SSE] + [_chunk(EV1)] * 6
    server = PiecesServer(pieces, keep=False)
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(_request(server.url, "big") + BODY)
        reads = reader.read(sock.fileno(), max_bytes=len(SSE) + 150, max_reads=1000)
    assert reads.result == TOO_LARGE and reads.head_len == len(SSE)
    assert reads.size > len(SSE) + 150 and reads.size == int(reads.ends[-1])  # what was read, counted
    assert reads.raw(0, reads.head_len) == SSE and len(reads.data) == len(SSE) and reads.body == b""

    client = StreamClient(server.url, 2.0, bounds=Bounds(max_bytes=len(SSE) + 150), reader=reader)
    out = _post(client, server.url, "big2")
    assert (out.status, out.error_class) == (200, "stream_too_large")
    cut_at = int(out.error_message.split("cut after ")[1].split(" bytes")[0])
    assert cut_at > len(SSE) + 150 and client._sock is None
    client.close()
    server.close()


def test_a_read_is_stamped_when_its_bytes_arrived_not_when_the_thread_read_them(reader: NativeReader) -> None:
    """The kernel's receive stamp: bytes that sat in the socket for 80 ms before the thread was given it
    keep the time they arrived (here: when the server's send returned, within a few ms), and every
    read of this response carried that stamp."""
    server = PiecesServer([SSE + WHOLE], keep=False)
    before = reader.stamps()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # as the thread sets it on watch
        sock.sendall(_request(server.url, "late") + BODY)
        time.sleep(PAUSE_S + 0.08)  # the server answers after PAUSE_S; the bytes then wait, unread
        handed = time.monotonic_ns()
        reads = reader.read(sock.fileno(), max_bytes=1 << 20, max_reads=1000)
    sent_at = server.requests[0][0] + int(PAUSE_S * 1e9)  # the request's arrival + the server's pause
    assert reads.result != TOO_LARGE and len(reads.stamps) == 1
    stamp = int(reads.stamps[0])
    assert sent_at - 2_000_000 <= stamp <= sent_at + 20_000_000, (stamp - sent_at) / 1e6
    assert handed - stamp >= 50_000_000, (handed - stamp) / 1e6  # not the moment of the read
    after = reader.stamps()
    assert after["reads"] == before["reads"] + 1 and after["thread_stamped"] == before["thread_stamped"]
    server.close()
