"""The C truth server (``harness/fidelity/truthserver.c``): the Python server's bytes, log and HTTP behaviour.

Why a test file of its own: the C server is the default truth side of
``make bench-harness``, so it must be indistinguishable from the Python one
(``tests/test_fidelity_truth.py``) in what a client or ``read_truth_log``
sees: the same response bytes as ``truthsse.Shape``, the same status codes
for the same requests, the same log. Behaviour only, no speed assertions;
timing bounds are loose (the machine is shared). Skipped only where there is
no gcc (CI has it); the build helper's error paths run everywhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from harness.backends.process import free_port
from harness.fidelity.cbuild import CBuildError, binary_path, source_files, truthserver_binary
from harness.fidelity.truthlog import read_truth_log
from harness.fidelity.truthserver import FIRE_OFFSET_NS
from harness.fidelity.truthsse import SSE_TYPE, Shape

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "harness" / "fidelity" / "truthserver.c"
MS = 1_000_000
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return truthserver_binary(tmp_path_factory.mktemp("home"))


class Server:
    """A running truth server (the C binary or the Python module) with its log path."""

    def __init__(
        self, cmd: list[str], tmp: Path, ttft_ms: float, itl_ms: float, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.log = tmp / f"truth-{self.port}.bin"
        self.proc = subprocess.Popen(
            [
                *cmd,
                "--port",
                str(self.port),
                "--ttft-ms",
                f"{ttft_ms:g}",
                "--itl-ms",
                f"{itl_ms:g}",
                "--log",
                str(self.log),
                "--nice",
                "0",
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "truth server did not start"
                time.sleep(0.05)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self, sig: int = signal.SIGTERM) -> bytes:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=20)
        return out


@pytest.fixture
def c_server(binary: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server([str(binary)], tmp_path, ttft_ms=30, itl_ms=5)
    yield srv
    srv.stop()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while not (data.endswith(b"0\r\n\r\n") or (b"content-length" in data and data.endswith(b"}"))):
        got = sock.recv(65536)
        if not got:
            break
        data += got
    return data


def _post(sock: socket.socket, rid: str, body: bytes, path: str = "/v1/completions") -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)


def _request(n: int, usage: bool = True, cont: bool = True, **extra: Any) -> bytes:
    req: dict[str, Any] = {"model": "sim-model", "prompt": "w w w w", "max_tokens": n, "stream": True}
    req["stream_options"] = {"include_usage": usage, "continuous_usage_stats": cont}
    return orjson.dumps(req | extra)


# --- bytes ----------------------------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize(
    ("usage", "continuous"), [(True, True), (True, False), (False, False), (False, True)]
)
def test_c_server_writes_the_python_shapes_bytes(c_server: Server, usage: bool, continuous: bool) -> None:
    n, model = 6, 'm"\\é\n\x01'
    prompt = "a\u00a0b\tc\u2003d  e\x1cf \\n"  # str.split(): non-ASCII and \x1c whitespace too: 7 words
    with c_server.connect() as sock:
        _post(sock, "b-1", _request(n, usage, continuous, model=model, prompt=prompt))
        raw = _read_response(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head == (
        b"HTTP/1.1 200 OK\r\nserver: tokenbench-truth\r\ncontent-type: %s\r\ntransfer-encoding: chunked"
        % SSE_TYPE
    )
    first = orjson.loads(body.split(b"\r\n")[1].split(b"\n\n")[0][len(b"data: ") :])
    oid, created = first["id"].encode(), first["created"]
    assert len(oid) == 37 and oid.startswith(b"cmpl-") and int(oid[5:], 16) >= 0
    assert abs(created - time.time()) < 3600
    shape = Shape(orjson.dumps(model), created, len(prompt.split()), n, usage, continuous)
    assert body == b"".join(oid.join(p) for p in shape.parts)


@needs_gcc
def test_each_request_gets_its_own_random_id(c_server: Server) -> None:
    ids = set()
    with c_server.connect() as sock:
        for k in range(3):
            _post(sock, f"i-{k}", _request(1))
            ids.add(_read_response(sock).split(b'"id":"')[1][:37])
    assert len(ids) == 3


# --- HTTP behaviour, against the Python server's --------------------------------------------

CASES: list[tuple[str, str, bytes]] = [
    ("GET", "/health", b""),
    ("GET", "/health?x=1", b""),
    ("POST", "/v1/chat/completions", _request(2)),
    ("GET", "/v1/completions", b""),
    ("POST", "/v1/completions?a=b", _request(1)),
    ("POST", "/v1/completions", b"{"),
    ("POST", "/v1/completions", b""),
    ("POST", "/v1/completions", _request(2) + b" x"),
    ("POST", "/v1/completions", b"[1, 2]"),
    ("POST", "/v1/completions", orjson.dumps({"prompt": "a", "max_tokens": 2, "stream": False})),
    ("POST", "/v1/completions", orjson.dumps({"prompt": "a", "max_tokens": 0, "stream": True})),
    ("POST", "/v1/completions", orjson.dumps({"prompt": ["a"], "max_tokens": 2, "stream": True})),
    ("POST", "/v1/completions", orjson.dumps({"max_tokens": 2, "stream": True})),
    ("POST", "/v1/completions", orjson.dumps({"prompt": "a", "stream": True})),
    ("POST", "/v1/completions", orjson.dumps({"prompt": "a", "max_tokens": None, "stream": True})),
    ("POST", "/v1/completions", orjson.dumps({"prompt": "a", "max_tokens": "2", "stream": 1})),
    ("POST", "/v1/completions", orjson.dumps({"prompt": "a", "max_tokens": 2.9, "stream": "yes"})),
    (
        "POST",
        "/v1/completions",
        orjson.dumps({"prompt": "a", "max_tokens": 1, "stream": True, "stream_options": [1]}),
    ),
    (
        "POST",
        "/v1/completions",
        orjson.dumps({"prompt": "a", "max_tokens": 1, "stream": True, "stream_options": []}),
    ),
    ("POST", "/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 1, "stream": true}'),
    ("POST", "/v1/completions", b'{"prompt": "\xff", "max_tokens": 1, "stream": true}'),
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 1, "stream": true, "x": [1, {"y": nul}]}'),
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 1, "stream": true, "x": [1, {"y": -0.5e3}]}'),
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 1, "stream": true, "prompt": 5}'),
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 1, "stream": true,}'),
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 01, "stream": true}'),
]


def _status_of(sock: socket.socket, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    raw = _read_response(sock)
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], rest if b"content-length" in head else b"<stream>"


@needs_gcc
def test_c_server_answers_every_request_as_the_python_server_does(binary: Path, tmp_path: Path) -> None:
    answers = {}
    for name, cmd in (("c", [str(binary)]), ("py", [sys.executable, "-m", "harness.fidelity.truthserver"])):
        srv = Server(cmd, tmp_path, ttft_ms=1, itl_ms=1)
        try:
            with srv.connect() as sock:  # all on one keep-alive connection
                answers[name] = [_status_of(sock, *case) for case in CASES]
        finally:
            srv.stop()
    for case, c, py in zip(CASES, answers["c"], answers["py"], strict=True):
        assert c == py, case
    assert {a[0] for a in answers["c"]} == {
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 400 Bad Request",
    }


@needs_gcc
def test_an_oversized_head_or_body_closes_the_connection(c_server: Server) -> None:
    with c_server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * (70 * 1024))
        assert sock.recv(100) == b""
    with c_server.connect() as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n{")
        assert sock.recv(100) == b""
    with c_server.connect() as sock:  # the server is still serving
        sock.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        assert _read_response(sock).endswith(b'{"status":"ok"}')


# --- timing and the log ----------------------------------------------------------------------


@needs_gcc
def test_c_server_serves_streams_on_schedule_and_its_log_reads_back(c_server: Server) -> None:
    n_streams, n_tokens, ttft_ms, itl_ms = 12, 10, 30, 5
    results: dict[str, bytes] = {}

    def client(k: int) -> None:
        with c_server.connect() as sock:
            for rep in range(2):  # two requests on one keep-alive connection
                rid = f"r-{k}-{rep}"
                _post(sock, rid, _request(n_tokens))
                results[rid] = _read_response(sock)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    out = c_server.stop()
    assert out.decode().startswith(f"truth server on 127.0.0.1:{c_server.port}\n")
    assert c_server.proc.returncode == 0
    assert len(results) == 2 * n_streams and all(
        r.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") for r in results.values()
    )
    log = read_truth_log(c_server.log)
    assert sorted(log.requests) == sorted(results)
    gaps = []
    for rid, truth in log.requests.items():
        assert truth.outcome == "ok" and truth.output_tokens == n_tokens and truth.prompt_tokens == 4, rid
        times = np.asarray(truth.chunk_times_ns)
        assert (np.diff(times) > 0).all(), rid
        due = truth.arrival_ns + ttft_ms * MS + np.arange(n_tokens) * itl_ms * MS
        assert (times >= due - FIRE_OFFSET_NS).all(), rid  # never earlier than half a wheel bucket
        assert truth.end_ns >= times[-1]
        gaps += np.diff(times).tolist()
    assert 0.5 * itl_ms * MS <= np.median(gaps) <= 2 * itl_ms * MS
    assert log.lateness_ns.size == 2 * n_streams * n_tokens
    assert (log.lateness_ns >= -FIRE_OFFSET_NS).all() and (log.backpressure_ns >= 0).all()
    assert log.cpu_s is not None and 0 < log.cpu_s < 30 and log.nice is not None


@needs_gcc
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_client_gone_mid_stream_and_a_stream_open_at_shutdown_are_logged(
    c_server: Server, sig: int
) -> None:
    gone, open_ = c_server.connect(), c_server.connect()
    _post(gone, "gone", _request(200))
    _post(open_, "open", _request(10_000))
    data = b""
    while data.count(b"data: ") < 2:
        data += gone.recv(65536)
    gone.close()
    time.sleep(0.2)
    assert open_.recv(65536)
    c_server.stop(sig)
    open_.close()
    log = read_truth_log(c_server.log)
    g, o = log.requests["gone"], log.requests["open"]
    assert g.outcome == "client_gone" and 2 <= g.output_tokens < 200 and g.end_ns >= g.chunk_times_ns[-1]
    assert o.outcome == "client_gone" and 0 < o.output_tokens < 10_000


@needs_gcc
def test_a_client_that_stops_reading_gets_its_chunks_queued_and_timed_when_they_drain(
    c_server: Server,
) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, set before connecting
    sock.connect(("127.0.0.1", c_server.port))
    body = _request(100, model="m" * 30_000)  # ~60 kB a chunk: the socket fills within a few chunks
    _post(sock, "slow", body)
    time.sleep(0.6)  # not reading: the server queues (every chunk is due by then)
    got = b""
    while not got.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        assert chunk
        got += chunk
    sock.close()
    c_server.stop()
    body_bytes = got.partition(b"\r\n\r\n")[2]
    first = orjson.loads(body_bytes.split(b"\r\n")[1].split(b"\n\n")[0][len(b"data: ") :])
    shape = Shape(orjson.dumps("m" * 30_000), first["created"], 4, 100, True, True)
    assert body_bytes == b"".join(first["id"].encode().join(p) for p in shape.parts)  # queued bytes intact
    log = read_truth_log(c_server.log)
    truth = log.requests["slow"]
    assert truth.outcome == "ok" and truth.output_tokens == 100
    assert log.backpressure_ns.max() > 100 * MS  # written long after the first try
    assert (log.backpressure_ns >= 0).all()


# --- the build helper -----------------------------------------------------------------------


def test_a_missing_compiler_is_a_clear_error_naming_the_command(tmp_path: Path) -> None:
    with pytest.raises(
        CBuildError, match=r"cannot build the C truth server: `/nonexistent/cc -O2 .*truthserver\.c"
    ):
        truthserver_binary(tmp_path, cc="/nonexistent/cc")
    assert not binary_path(tmp_path).exists() and not list((tmp_path / "bin").iterdir())


def test_a_home_that_cannot_hold_the_binary_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "not-a-dir"
    home.write_text("")
    with pytest.raises(CBuildError, match="cannot build the C truth server"):
        truthserver_binary(home)


def test_the_compiler_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENBENCH_CC", "/nonexistent/env-cc")
    with pytest.raises(CBuildError, match="/nonexistent/env-cc"):
        truthserver_binary(tmp_path)


@needs_gcc
def test_a_compile_error_is_reported_with_the_compilers_output(tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int main(void) { return undefined_name; }\n")
    with pytest.raises(CBuildError, match=r"(?s)exited 1:.*undefined_name"):
        truthserver_binary(tmp_path, source=bad)
    assert not list((tmp_path / "bin").iterdir())  # no half-built binary left behind


@needs_gcc
def test_the_binary_is_built_once_per_source_and_reused(tmp_path: Path) -> None:
    for part in source_files():
        (tmp_path / part.name).write_bytes(part.read_bytes())
    src = tmp_path / SOURCE.name
    first = truthserver_binary(tmp_path, source=src)
    assert first.name.startswith("tokenbench-truthserver-") and os.access(first, os.X_OK)
    stamp = first.stat().st_mtime_ns
    again = truthserver_binary(tmp_path, cc="/nonexistent/cc", source=src)  # cached: no compiler run
    assert again == first and again.stat().st_mtime_ns == stamp
    header = tmp_path / "truthjson.h"
    header.write_bytes(header.read_bytes() + b"\n/* edited */\n")
    with pytest.raises(CBuildError):  # an edited part is a new binary, so this one must be compiled
        truthserver_binary(tmp_path, cc="/nonexistent/cc", source=src)


@needs_gcc
def test_the_source_compiles_warnings_clean() -> None:
    done = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr


def test_truth_c_is_the_default_and_a_failed_build_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.fidelity.cli import build_parser, main

    assert build_parser().parse_args([]).truth == "c"
    monkeypatch.setenv("TOKENBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TOKENBENCH_CC", "/nonexistent/cc")
    assert main(["--quick", "--only", "c1", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot build the C truth server" in err and "/nonexistent/cc" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("sched", ["fifo", "nice"])
def test_the_launcher_starts_the_truth_server_real_time_where_permitted(tmp_path: Path, sched: str) -> None:
    """``sched="fifo"``: the server process itself runs SCHED_FIFO 2 (above the readers' 1) when this
    process may grant it, and the step says so; ``nice``, or no privilege: the normal class."""
    from harness.backends.process import ProcessRegistry
    from harness.fidelity.cpushare import realtime_prefix
    from harness.fidelity.steps import SimTiming, start_truth_server

    with ProcessRegistry() as registry:
        proc, base, _log, said = start_truth_server(tmp_path, SimTiming(), registry, "c", sched)
        try:
            policy = os.sched_getscheduler(proc.pid)
            priority = os.sched_getparam(proc.pid).sched_priority
        finally:
            proc.terminate(5.0)
    if sched == "fifo" and realtime_prefix():
        assert (policy, priority, said) == (os.SCHED_FIFO, 2, "SCHED_FIFO 2")
    else:
        assert policy == os.SCHED_OTHER and said.startswith("normal")
    with pytest.raises(ValueError, match="sched: expected one of"):
        start_truth_server(tmp_path, SimTiming(), ProcessRegistry(), "c", "rr")


def _server_cmd(kind: str, binary: Path) -> list[str]:
    return [str(binary)] if kind == "c" else [sys.executable, "-m", "harness.fidelity.truthserver"]


@needs_gcc
@pytest.mark.parametrize("kind", ["c", "lean"])
def test_the_congestion_control_asked_for_is_the_one_its_connections_use(
    kind: str, binary: Path, tmp_path: Path
) -> None:
    """``--congestion reno`` (the fidelity driver's default; steps.py says why) on every connection."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("no ss (iproute2) to read a socket's congestion control")
    srv = Server(_server_cmd(kind, binary), tmp_path, ttft_ms=30, itl_ms=5, extra=("--congestion", "reno"))
    try:
        with srv.connect() as sock:
            _post(sock, "cc-1", _request(2))
            assert _read_response(sock).endswith(b"0\r\n\r\n")
            info = subprocess.run(
                [ss, "-tin", "state", "established", f"( sport = :{srv.port} )"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        assert " reno " in info, info
    finally:
        srv.stop()


@needs_gcc
@pytest.mark.parametrize("kind", ["c", "lean"])
def test_an_unknown_congestion_control_stops_the_server_naming_it(
    kind: str, binary: Path, tmp_path: Path
) -> None:
    cmd = [*_server_cmd(kind, binary), "--port", str(free_port()), "--log", str(tmp_path / "t.bin")]
    proc = subprocess.run(
        [*cmd, "--congestion", "no-such-cc"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    assert "--congestion no-such-cc" in proc.stdout + proc.stderr
