"""The load users' HTTP client: request framing, keep-alive reuse, error classes, and stamps vs the sim."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from harness.load.bounds import Bounds
from harness.load.httphead import finish_head, request_prefix
from harness.load.httpstream import StreamClient
from harness.load.nativeread import NativeReader, open_reader
from harness.protocols.registry import get_protocol

Script = Callable[[socket.socket, int], None]


class ScriptedServer:
    """A blocking one-thread server: each accepted connection runs ``script(conn, index)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            part = conn.recv(65536)
            if not part:
                return data
            data += part
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k == b"Content-Length")
        )
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(data)
        return data

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index = self.accepted
            self.accepted += 1
            with conn:
                try:
                    self.script(conn, index)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def native_reader() -> Iterator[NativeReader]:
    reader, kind = open_reader()
    if reader is None:
        pytest.fail(f"the native reader must build here (gcc is on every machine this suite runs on): {kind}")
    yield reader
    reader.close()


@pytest.fixture(params=["python", "native"])
def make_client(request, native_reader) -> Callable[..., StreamClient]:
    """``StreamClient`` on the Python read path or the native reader's: every test here runs on both."""
    reader = native_reader if request.param == "native" else None
    return functools.partial(StreamClient, reader=reader)


def _chunked(*payloads: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _post(client: StreamClient, url: str, rid: str = "s-1") -> object:
    prefix = request_prefix(url, "/v1/completions", {"Content-Type": "application/json"})
    body = b'{"prompt":"hi"}'
    return client.post(finish_head(prefix, rid, len(body)), body, timeout_s=5.0)


def test_request_prefix_renders_path_prefix_host_and_headers() -> None:
    prefix = request_prefix("http://h.example:8080/api/", "/v1/completions", {"Authorization": "Bearer s"})
    assert prefix.startswith(b"POST /api/v1/completions HTTP/1.1\r\nHost: h.example:8080\r\n")
    assert b"Authorization: Bearer s\r\n" in prefix
    head = finish_head(prefix, "c1-7", 12)
    assert head.endswith(b"X-Request-Id: c1-7\r\nContent-Length: 12\r\n\r\n")


def test_header_injection_is_refused_without_echoing_the_value() -> None:
    with pytest.raises(ValueError, match="Authorization") as err:
        request_prefix("http://h:1", "/x", {"Authorization": "secret\r\nX-Evil: 1"})
    assert "secret" not in str(err.value)
    with pytest.raises(ValueError, match="token"):
        request_prefix("http://h:1", "/x", {"Bad Name": "v"})


def test_bad_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="base_url"):
        StreamClient("ftp://h/x", 1.0)


def test_keep_alive_connection_is_reused_and_a_closed_one_replaced(scripted, make_client) -> None:
    body = b'data: {"choices":[{"text":"a","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'

    def script(conn: socket.socket, index: int) -> None:
        # connection 0 serves two requests then closes; connection 1 serves one
        for _ in range(2 if index == 0 else 1):
            server.read_request(conn)
            conn.sendall(SSE_HEAD + _chunked(body))

    server = scripted(script)
    client = make_client(server.url, 2.0)
    outcomes = [_post(client, server.url, f"s-{i}") for i in range(2)]
    time.sleep(0.2)  # the server has closed connection 0 by now
    outcomes.append(_post(client, server.url, "s-2"))
    assert [o.status for o in outcomes] == [200, 200, 200]
    assert [o.error_class for o in outcomes] == [None, None, None]
    assert server.accepted == 2  # the third request noticed the close and reconnected
    assert [r.split(b"X-Request-Id: ")[1].split(b"\r\n")[0] for r in server.requests] == [
        b"s-0",
        b"s-1",
        b"s-2",
    ]
    res = get_protocol("completions").interpret(outcomes[0].splitter.events)
    assert res.text == "a" and res.done
    client.close()


def test_close_before_headers_is_a_connect_error(scripted, make_client) -> None:
    def script(conn: socket.socket, index: int) -> None:
        server.read_request(conn)

    server = scripted(script)
    out = _post(make_client(server.url, 2.0), server.url)
    assert out.error_class == "connect" and out.status == 0


def test_refused_connection_is_a_connect_error(make_client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = _post(make_client(url, 2.0), url)
    assert out.error_class == "connect"


def test_http_error_keeps_status_and_body_text(scripted, make_client) -> None:
    def script(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        msg = b'{"error":"slow down"}'
        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(msg), msg))

    server = scripted(script)
    out = _post(make_client(server.url, 2.0), server.url)
    assert out.status == 429 and out.error_class == "http_4xx"
    assert "slow down" in (out.error_message or "")


def test_whole_request_deadline_is_a_timeout(scripted, make_client) -> None:
    def script(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEAD + b"5\r\ndata:\r\n")
        time.sleep(1.0)

    server = scripted(script)
    client = make_client(server.url, 2.0)
    prefix = request_prefix(server.url, "/v1/completions", {})
    out = client.post(finish_head(prefix, "t", 2), b"{}", timeout_s=0.3)
    assert out.error_class == "timeout" and out.status == 200


def test_stamps_bracket_the_sims_write_log(sim_server, make_client) -> None:
    """sent_ns precedes the sim's arrival stamp; each chunk stamp is its write, give or take scheduling.

    (The sim stamps a chunk right *after* its write returns, so a fast reader
    on the other core may stamp it a few microseconds earlier.)
    """
    sim = sim_server(ttft_ms=20, itl_ms=5)
    client = make_client(sim.base_url, 2.0)
    prefix = request_prefix(sim.base_url, "/v1/completions", {"Content-Type": "application/json"})
    body = orjson.dumps(
        {"model": "m", "prompt": "a b c", "max_tokens": 6, "ignore_eos": True, "stream": True}
    )
    out = client.post(finish_head(prefix, "stamp-1", len(body)), body, timeout_s=5.0)
    assert out.error_class is None
    res = get_protocol("completions").interpret(out.splitter.events)
    sim.stop()
    truth = sim.truth()["stamp-1"]
    assert truth.arrival_ns is not None
    assert out.sent_ns <= truth.arrival_ns
    assert len(res.chunk_times_ns) == len(truth.chunk_times_ns) == 6
    assert res.chunk_times_ns[0] - out.sent_ns >= 20_000_000  # never earlier than the sim's TTFT
    assert all(abs(h - t) < 50_000_000 for h, t in zip(res.chunk_times_ns, truth.chunk_times_ns, strict=True))


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listening socket on 127.0.0.1 that never accepts, with its accept queue already full.

    Linux drops a SYN to a full accept queue, so a further connect neither
    succeeds nor is refused: it hangs until the client gives up.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    fillers: list[socket.socket] = []
    for _ in range(8):
        s = socket.socket()
        s.settimeout(0.3)
        fillers.append(s)
        try:
            s.connect(server.getsockname())
        except TimeoutError:
            break
    else:
        pytest.skip("the accept queue never filled up")
    yield url
    for s in fillers:
        s.close()
    server.close()


def test_a_connection_never_established_is_connect_timeout(full_backlog: str, make_client) -> None:
    out = _post(make_client(full_backlog, 0.4), full_backlog)
    assert out.error_class == "connect_timeout" and out.status == 0, out.error_message
    assert "no connection" in (out.error_message or "")
    # the whole-request deadline firing while still connecting is the same class
    client = make_client(full_backlog, 5.0)
    prefix = request_prefix(full_backlog, "/v1/completions", {})
    out = client.post(finish_head(prefix, "t", 2), b"{}", timeout_s=0.4)
    assert out.error_class == "connect_timeout", out.error_message


def test_retry_after_of_429_and_503_is_recorded(scripted, make_client) -> None:
    def script(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        status = (b"429 Too Many Requests", b"503 Service Unavailable", b"500 Oops")[index]
        conn.sendall(
            b"HTTP/1.1 %s\r\nRetry-After: 12\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}" % status
        )

    server = scripted(script)
    client = make_client(server.url, 2.0)
    outs = [_post(client, server.url, f"s-{i}") for i in range(3)]
    assert [o.status for o in outs] == [429, 503, 500]
    assert [o.retry_after for o in outs] == ["12", "12", None]  # only 429/503 ask to retry


def test_a_response_past_the_bound_is_cut_as_stream_too_large(scripted, make_client) -> None:
    event = b'data: {"choices":[{"text":"a","finish_reason":null}]}\n\n'

    def script(conn: socket.socket, index: int) -> None:
        server.read_request(conn)
        conn.sendall(SSE_HEAD)
        while True:  # endless, one event per write
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            time.sleep(0.001)

    server = scripted(script)
    client = make_client(server.url, 2.0, bounds=Bounds(max_bytes=2**30, max_reads=20))
    out = _post(client, server.url)
    assert out.error_class == "stream_too_large" and out.status == 200
    assert "20 chunks" in (out.error_message or "")
    assert out.splitter.size == 0  # the body is dropped, not kept
    assert client._sock is None  # the connection is closed
    client = make_client(server.url, 2.0, bounds=Bounds(max_bytes=1000, max_reads=10**6))
    out = _post(client, server.url)
    assert out.error_class == "stream_too_large" and "1000 bytes" in (out.error_message or "")
