"""The fidelity benchmark's lean truth server, its binary log, the per-token stamp lag and the new columns.

Behaviour only (bytes, counts, ordering, joins, labels); no speed assertions:
how fast the truth server is, is what ``make bench-harness`` reports.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from harness.backends.process import free_port
from harness.fidelity.compare import compare_step, server_token_rate, stamp_lag
from harness.fidelity.truthlog import TruthLogError, TruthLogWriter, read_truth_log
from harness.fidelity.truthserver import FIRE_OFFSET_NS
from harness.fidelity.truthsse import Shape
from harness.load.collector import request_key
from harness.sim.generation import GenSpec, Plan
from harness.sim.openai_api import OpenAIFormat
from harness.sim.writelog import RequestTruth

REPO = Path(__file__).resolve().parent.parent
MS = 1_000_000


# --- the bytes are the sim's ----------------------------------------------------------------


def _sim_bytes(fmt: OpenAIFormat, n: int) -> list[bytes]:
    """What the sim's stream driver writes per chunk (httpconn's chunked framing, end_stream on the last)."""
    out = []
    for i in range(n):
        data = fmt.chunk(i, 1, i == 0, i == n - 1)
        if i == n - 1:
            data += fmt.tail()
            out.append(b"%x\r\n%s\r\n" % (len(data), data) + b"0\r\n\r\n")
        else:
            out.append(b"%x\r\n%s\r\n" % (len(data), data))
    return out


@pytest.mark.parametrize(("usage", "continuous"), [(True, True), (True, False), (False, False)])
def test_truth_server_chunks_are_byte_for_byte_the_sims_completions_stream(
    usage: bool, continuous: bool
) -> None:
    n, prompt = 5, 7
    spec = GenSpec(
        "completions",
        "sim-model",
        prompt,
        n,
        ignore_eos=True,
        stream=True,
        include_usage=usage,
        continuous_usage=continuous,
    )
    fmt = OpenAIFormat(spec, Plan(n, "length"))
    shape = Shape(orjson.dumps("sim-model"), fmt.created, prompt, n, usage, continuous)
    oid = fmt.oid.encode()
    assert [oid.join(p) for p in shape.parts] == _sim_bytes(fmt, n)


# --- the log --------------------------------------------------------------------------------


def test_truth_log_round_trips_requests_chunks_lateness_and_backpressure(tmp_path: Path) -> None:
    w = TruthLogWriter()
    a = w.arrival_of("s-1", 1_000, 3)
    b = w.arrival_of("s-2", 2_000, 4)
    w.chunks.extend((a, 0, 5_000, 4_000, 4_500))  # sent at once: attempt 4.5 µs, 0.5 µs late
    slot = w.chunk(b, 0, 6_000, 6_100)  # queued (client socket full) ...
    w.chunks.extend((a, 1, 7_000, 7_000, 7_000))
    w.set_time(slot, 9_100)  # ... and drained 3 µs later
    w.chunk(b, 1, 8_000, 8_000)  # never written (connection failed): dropped
    w.end_of(a, 7_500)
    w.end_of(b, 9_200, gone=True)
    w.nice = -10
    path = tmp_path / "truth.bin"
    w.dump(path, cpu_s=1.25)
    log = read_truth_log(path)
    assert list(log.requests) == ["s-1", "s-2"]
    r1, r2 = log.requests["s-1"], log.requests["s-2"]
    assert (r1.arrival_ns, r1.prompt_tokens, r1.chunk_times_ns, r1.end_ns, r1.outcome) == (
        1_000,
        3,
        [5_000, 7_000],
        7_500,
        "ok",
    )
    assert (r2.chunk_times_ns, r2.output_tokens, r2.outcome) == ([9_100], 1, "client_gone")
    assert sorted(log.lateness_ns.tolist()) == [0, 100, 500]
    assert sorted(log.backpressure_ns.tolist()) == [0, 500, 3_000]
    assert log.cpu_s == 1.25 and log.nice == -10


def test_a_truncated_or_foreign_truth_log_is_refused_naming_the_file(tmp_path: Path) -> None:
    w = TruthLogWriter()
    w.arrival_of("x", 1, 1)
    w.chunk(0, 0, 5, 5)
    good = tmp_path / "t.bin"
    w.dump(good)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(TruthLogError, match="cut.bin: truncated"):
        read_truth_log(cut)
    other = tmp_path / "other.csv"
    other.write_text("event,request_id\n")
    with pytest.raises(TruthLogError, match="other.csv: not a truth-server log"):
        read_truth_log(other)


# --- the server, for real -------------------------------------------------------------------


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while not (data.endswith(b"0\r\n\r\n") or (b"content-length" in data and data.endswith(b"}"))):
        got = sock.recv(65536)
        if not got:
            break
        data += got
    return data


def _events(raw: bytes) -> list[dict[str, Any] | str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
    payload = b""
    while True:  # undo the chunked framing
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payload += rest[:size]
        body = rest[size + 2 :]
    out: list[dict[str, Any] | str] = []
    for ev in payload.split(b"\n\n"):
        if ev.startswith(b"data: "):
            text = ev[6:]
            out.append(text.decode() if text == b"[DONE]" else orjson.loads(text))
    return out


def _body(n: int) -> bytes:
    return orjson.dumps(
        {
            "model": "sim-model",
            "prompt": "w w w w",
            "max_tokens": n,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )


def _post(sock: socket.socket, rid: str, body: bytes, path: str = "/v1/completions") -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)


def test_truth_server_serves_n_streams_on_schedule_and_its_log_reads_back(tmp_path: Path) -> None:
    port, n_streams, n_tokens, ttft_ms, itl_ms = free_port(), 12, 10, 30, 5
    log_path = tmp_path / "truth.bin"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.fidelity.truthserver",
            "--port",
            str(port),
            "--ttft-ms",
            str(ttft_ms),
            "--itl-ms",
            str(itl_ms),
            "--log",
            str(log_path),
            "--nice",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                probe = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "truth server did not start"
                time.sleep(0.05)
        with probe:
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(probe).startswith(b"HTTP/1.1 200 OK")
            _post(probe, "bad", b"{}", "/v1/chat/completions")
            assert _read_response(probe).startswith(b"HTTP/1.1 404")
            _post(probe, "bad", orjson.dumps({"prompt": "a", "max_tokens": 2, "stream": False}))
            assert _read_response(probe).startswith(b"HTTP/1.1 400")
        results: dict[str, list[Any]] = {}

        def client(k: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                for rep in range(2):  # two requests on one keep-alive connection
                    rid = f"r-{k}-{rep}"
                    _post(sock, rid, _body(n_tokens))
                    results[rid] = _events(_read_response(sock))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(n_streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert len(results) == 2 * n_streams
    for rid, events in results.items():
        texts = [e for e in events if isinstance(e, dict) and e["choices"]]
        assert len(texts) == n_tokens, rid
        assert all(e["choices"][0]["text"] == " tok" for e in texts)
        assert [e["usage"]["completion_tokens"] for e in texts] == list(range(1, n_tokens + 1))
        assert texts[-1]["choices"][0]["finish_reason"] == "length"
        final = [e for e in events if isinstance(e, dict) and not e["choices"]]
        assert final[0]["usage"] == {
            "prompt_tokens": 4,
            "total_tokens": 4 + n_tokens,
            "completion_tokens": n_tokens,
        }
        assert events[-1] == "[DONE]"
        assert len({e["id"] for e in events if isinstance(e, dict)}) == 1
    log = read_truth_log(log_path)
    assert sorted(log.requests) == sorted(results)
    for rid, truth in log.requests.items():
        assert truth.outcome == "ok" and truth.output_tokens == n_tokens and truth.prompt_tokens == 4
        times = np.asarray(truth.chunk_times_ns)
        assert (np.diff(times) > 0).all(), rid
        due = truth.arrival_ns + ttft_ms * MS + np.arange(n_tokens) * itl_ms * MS
        assert (times >= due - FIRE_OFFSET_NS).all(), rid  # never earlier than half a wheel bucket
        assert truth.end_ns >= times[-1]
    assert log.lateness_ns.size == 2 * n_streams * n_tokens
    assert (log.lateness_ns >= -FIRE_OFFSET_NS).all() and (log.backpressure_ns >= 0).all()
    assert log.cpu_s is not None and log.cpu_s > 0 and log.nice is not None


# --- stamp lag and the real load ------------------------------------------------------------


def _row_truth(rid: int, truth_times: list[int], stamps: list[int], tokens: list[int]) -> tuple:
    row = {
        "step_id": "s",
        "request_id": rid,
        "scheduled_ns": truth_times[0] - 100 * MS,
        "sent_ns": truth_times[0] - 100 * MS,
        "first_token_ns": stamps[0],
        "chunk_times_ns": stamps,
        "chunk_tokens": tokens,
        "output_tokens": len(truth_times),
        "client_output_tokens": sum(tokens),
        "error_class": None,
        "warmup": False,
    }
    truth = RequestTruth(
        request_id=request_key("s", rid),
        arrival_ns=truth_times[0] - 100 * MS,
        chunk_times_ns=truth_times,
        chunk_tokens=[1] * len(truth_times),
        end_ns=truth_times[-1],
    )
    return row, truth


def test_stamp_lag_joins_each_client_chunk_to_the_write_of_its_last_token() -> None:
    w = [100 * MS + i * 10 * MS for i in range(4)]
    # the client saw tokens 1 and 2 in one read (coalesced: one event of 2 tokens), stamped late
    a = _row_truth(1, w, [w[0] + 1 * MS, w[2] + 3 * MS, w[3] + 2 * MS], [1, 2, 1])
    b = _row_truth(2, w, [t + MS // 2 for t in w], [1, 1, 1, 1])
    lost = _row_truth(3, w, [w[0], w[1]], [1, 1])  # totals disagree: skipped, not mis-joined
    res = stamp_lag([a, b, lost])
    assert res["requests"] == 2
    assert res["all_ms"]["samples"] == 7
    assert res["all_ms"]["max"] == pytest.approx(3.0)
    assert res["all_ms"]["p50"] == pytest.approx(0.5)
    assert res["first_ms"]["samples"] == 2
    assert res["first_ms"]["max"] == pytest.approx(1.0) and res["first_ms"]["p50"] == pytest.approx(0.75)


def test_server_token_rate_counts_only_writes_inside_the_window() -> None:
    t = RequestTruth("a", arrival_ns=0, chunk_times_ns=[0, 5, 10, 15], chunk_tokens=[1, 2, 1, 1])
    # window [5, 15): tokens 2 + 1 in 10 ns
    assert server_token_rate({"a": t}, (5, 15)) == pytest.approx(3 / 10e-9)
    assert server_token_rate({"a": t}, (5, 5)) is None


def test_the_bench_table_has_the_new_columns_and_says_how_late_a_truth_limited_step_was() -> None:
    from harness.fidelity.cli import HEADER, row, summarize
    from harness.fidelity.steps import ClientUsage, StepRun, StepSpec

    w = [100 * MS + i * 10 * MS for i in range(4)]
    pairs = [
        _row_truth(k, [t + k * MS for t in w], [t + k * MS + MS // 4 for t in w], [1] * 4) for k in range(3)
    ]
    rows = [r for r, _ in pairs]
    truth = {t.request_id: t for _, t in pairs}
    health = {"client_cpu_s": 0.5, "loop_lag_p99_ms": 0.3, "loop_lag_p50_ms": 0.1}
    late = np.full(12, 40 * MS)  # the truth server wrote every chunk 40 ms behind its schedule
    run = StepRun(
        StepSpec("c1024", "concurrency", 1024, 1.0),
        rows,
        truth,
        health,
        ClientUsage(total_cpu_s=0.6),
        1.0,
        "lean",
        late,
        np.zeros(12),
        0.2,
        -10,
        "SCHED_FIFO 2",
    )
    res = summarize(run)
    for col in ("stamp lag p50/p99/max", "1st tok p50/p99/max", "srv tok/s", "in-flight", "tok/treeCPUs"):
        assert col in HEADER
    line = row(res)
    assert "0.25/0.25/0.25" in line  # the stamp lag, p50/p99/max
    assert "TRUTH-LIMITED" in line and "own write lag p50 40.00" in line
    assert res["client"]["tokens_per_tree_cpu_s"] == pytest.approx(12 / 0.6)
    assert res["truth_server"] == {
        "kind": "lean",
        "sched": "SCHED_FIFO 2",
        "nice": -10,
        "cpu_s": 0.2,
        "cpu_s_per_1k_tokens_written": pytest.approx(1000 * 0.2 / 12),
    }
    checks = {t["check"]: t for t in res["targets"]}
    assert checks["stamp lag p99 ms"]["limit"] == 5.0 and checks["stamp lag p99 ms"]["met"] is True
    assert checks["streams in flight at server (fraction)"]["limit"] == 0.975
    assert checks["output tokens per client CPU-s (whole harness tree)"]["limit"] == 50_000
    full = compare_step(rows, truth, kind="concurrency", target=1024)
    assert full["stamp_lag"]["all_ms"]["samples"] == 12
