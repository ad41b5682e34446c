"""The fidelity benchmark (``python -m harness.fidelity``) and the hot-path pieces it pushed on.

The end-to-end test runs ``--quick`` for real (sim + Locust) and checks the
JSON's shape, that the sim's truth joins to every record, and that token
totals are exact. No timing assertions: those are what the benchmark reports.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.fidelity.compare import compare_step, server_in_flight
from harness.load.collector import request_key
from harness.load.sseframe import SseSplitter
from harness.protocols.jsonstream import parse_stream_json
from harness.protocols.registry import get_protocol
from harness.sim.writelog import RequestTruth

REPO = Path(__file__).resolve().parent.parent
MS = 1_000_000


# --- the comparison, on synthetic records and truth ------------------------------------------


def _pair(rid: int, *, sent: int, arrival: int, client_lag: int, n: int = 4, warmup: bool = False) -> tuple:
    truth_chunks = [arrival + 100 * MS + i * 10 * MS for i in range(n)]
    row: dict[str, Any] = {
        "step_id": "c2",
        "request_id": rid,
        "scheduled_ns": sent,
        "sent_ns": sent,
        "end_ns": truth_chunks[-1] + client_lag,
        "first_token_ns": truth_chunks[0] + client_lag,
        "chunk_times_ns": [t + client_lag for t in truth_chunks],
        "chunk_tokens": [1] * n,
        "output_tokens": n,
        "client_output_tokens": n,
        "error_class": None,
        "warmup": warmup,
    }
    truth = RequestTruth(
        request_id=request_key("c2", rid),
        arrival_ns=arrival,
        chunk_times_ns=truth_chunks,
        chunk_tokens=[1] * n,
        end_ns=truth_chunks[-1],
        outcome="length",
    )
    return row, truth


def test_compare_measures_the_client_offset_and_joins_by_request_id() -> None:
    pairs = [_pair(i, sent=i * 50 * MS, arrival=i * 50 * MS + 1 * MS, client_lag=2 * MS) for i in range(1, 6)]
    warm = _pair(99, sent=0, arrival=0, client_lag=0, warmup=True)
    rows = [r for r, _ in pairs] + [warm[0]]
    truth = {t.request_id: t for _, t in pairs} | {warm[1].request_id: warm[1]}
    res = compare_step(rows, truth, kind="concurrency", target=2)
    req = res["requests"]
    assert (req["records"], req["measured"], req["ok"], req["joined"], req["unmatched_records"]) == (
        6,
        5,
        5,
        5,
        0,
    )
    # TTFT: harness = 100 + 1 (transit) + 2 (client lag); truth = 100
    assert res["ttft_ms"]["harness"]["p50"] == pytest.approx(103.0)
    assert res["ttft_ms"]["truth"]["p50"] == pytest.approx(100.0)
    assert res["ttft_ms"]["diff"]["p50"] == pytest.approx(3.0)
    assert res["ttft_error_split"]["request_transit_ms"]["p50"] == pytest.approx(1.0)
    assert res["ttft_error_split"]["first_token_receipt_ms"]["p50"] == pytest.approx(2.0)
    # a constant lag shifts every chunk equally: per-gap ITL error is zero
    assert res["itl_ms"]["samples"] == 5 * 3
    assert res["itl_ms"]["abs_error"]["p99"] == pytest.approx(0.0)
    assert res["tokens"] == {
        "harness_usage": 20,
        "harness_counted": 20,
        "truth_sent": 20,
        "requests_wrong": 0,
        "exact": True,
    }


def test_compare_counts_unmatched_records_and_wrong_token_counts() -> None:
    a = _pair(1, sent=0, arrival=MS, client_lag=0)
    b = _pair(2, sent=0, arrival=MS, client_lag=0)
    b[0]["client_output_tokens"] = 3  # the client lost a token
    orphan = _pair(3, sent=0, arrival=MS, client_lag=0)[0]
    res = compare_step(
        [a[0], b[0], orphan], {a[1].request_id: a[1], b[1].request_id: b[1]}, kind="rate", target=5
    )
    assert res["requests"]["unmatched_records"] == 1
    assert res["requests"]["joined"] == 2
    assert res["tokens"]["exact"] is False
    assert res["tokens"]["requests_wrong"] == 1
    assert res["tokens"]["harness_counted"] == 7 and res["tokens"]["truth_sent"] == 8


def test_server_in_flight_is_the_time_average_of_open_requests() -> None:
    t1 = RequestTruth("a", arrival_ns=0, end_ns=10)
    t2 = RequestTruth("b", arrival_ns=5, end_ns=20)
    t3 = RequestTruth("c", arrival_ns=None)
    # window [0, 10): a open 10, b open 5 → 1.5 on average
    assert server_in_flight({"a": t1, "b": t2, "c": t3}, (0, 10)) == pytest.approx(1.5)
    assert server_in_flight({"a": t1}, (5, 5)) is None


# --- the lazy SSE splitter equals splitting read by read ---------------------------------------


def _reference_split(reads: list[tuple[bytes, int]]) -> tuple[list[tuple[int, bytes]], int, bytes]:
    """The straightforward incremental splitter the lazy one must agree with."""
    events: list[tuple[int, bytes]] = []
    coalesced = 0
    buf = b""
    for data, stamp in reads:
        buf = (buf + data).replace(b"\r\n", b"\n") if b"\r" in buf + data else buf + data
        n = 0
        while (idx := buf.find(b"\n\n")) >= 0:
            raw, buf = buf[:idx], buf[idx + 2 :]
            if raw.strip():
                events.append((stamp, raw))
                if raw.startswith(b"data:") and raw != b"data: [DONE]":
                    n += 1
        coalesced += max(0, n - 1)
    return events, coalesced, buf.strip()


def _stream(crlf: bool) -> bytes:
    parts = [b": keep-alive\n\n"]
    for i in range(12):
        obj = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
        parts.append(b"data: " + json.dumps(obj).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    body = b"".join(parts) + b'data: {"cut'
    return body.replace(b"\n", b"\r\n") if crlf else body


@pytest.mark.parametrize("crlf", [False, True])
def test_lazy_splitter_matches_incremental_splitting_on_random_reads(crlf: bool) -> None:
    rng = random.Random(7)
    body = _stream(crlf)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, 30)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        reads = [(p, 1000 * (i + 1)) for i, p in enumerate(pieces)]
        sp = SseSplitter()
        for data, stamp in reads:
            sp.feed(bytearray(data), stamp)
        events, coalesced, rest = _reference_split(reads)
        assert sp.events == events
        assert sp.coalesced == coalesced
        assert sp.reads == len(reads)
        assert sp.close() == rest


def test_splitter_sees_bytes_fed_after_a_first_look() -> None:
    sp = SseSplitter()
    sp.feed(b"data: {}\n\ndata: {", 1)
    assert [t for t, _ in sp.events] == [1]
    sp.feed(b'"a": 1}\n\n', 2)
    assert [t for t, _ in sp.events] == [1, 2]
    assert sp.close() == b""


# --- one JSON decode per stream, with a per-event fallback -----------------------------------


def _ev(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode()


def test_parse_stream_json_decodes_all_events_and_sees_done() -> None:
    events = [(1, _ev({"a": 1})), (2, b": comment"), (3, _ev({"b": 2})), (4, b"data: [DONE]")]
    parsed, done, err = parse_stream_json(events)
    assert parsed == [(1, {"a": 1}), (3, {"b": 2})]
    assert done and err is None


def test_parse_stream_json_names_the_malformed_event_and_keeps_the_ones_before() -> None:
    events = [(1, _ev({"a": 1})), (2, b'data: {"broken'), (3, _ev({"b": 2}))]
    parsed, _, err = parse_stream_json(events)
    assert parsed == [(1, {"a": 1})]
    assert err is not None and "malformed JSON" in err and "broken" in err


def test_two_objects_in_one_event_are_not_silently_split_by_the_joined_decode() -> None:
    events = [(1, b"data: {},{}"), (2, _ev({"b": 2}))]
    parsed, _, err = parse_stream_json(events)
    assert err is not None and parsed == []


def test_interpret_reports_a_malformed_event_as_an_error() -> None:
    ok = _ev({"choices": [{"index": 0, "text": " a", "finish_reason": None}]})
    res = get_protocol("completions").interpret([(1, ok), (2, b"data: {nope}"), (3, b"data: [DONE]")])
    assert res.error is not None and res.chunk_times_ns == [1]


# --- the real thing, small -------------------------------------------------------------------


def test_quick_benchmark_writes_joined_exact_results(tmp_path: Path) -> None:
    out = tmp_path / "fidelity.json"
    # the default truth side is the C server; without gcc it cannot be built, so the Python one stands in
    truth = "c" if shutil.which("gcc") else "lean"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.fidelity",
            "--quick",
            *(["--truth", "lean"] if truth == "lean" else []),
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "w"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert report["sim"]["ttft_ms"] == 100.0 and report["sim"]["itl_ms"] == 10.0
    names = [s["step"]["name"] for s in report["steps"]]
    assert names == ["c1", "c8x2", "r20"]
    for step in report["steps"]:
        req = step["requests"]
        assert req["ok"] > 0
        assert req["ok"] == req["measured"] == req["joined"], step["step"]["name"]
        assert req["unmatched_records"] == 0
        assert req["truth_requests"] >= req["records"]  # warm-up requests are in the log too
        assert step["tokens"]["exact"] is True
        assert step["tokens"]["truth_sent"] == req["joined"] * report["sim"]["output_tokens"]
        for block in ("ttft_ms", "itl_ms"):
            for side in ("harness", "truth", "diff"):
                assert set(step[block][side]) == {"p50", "p99"}
                assert step[block][side]["p50"] is not None
        lag = step["stamp_lag"]
        assert lag["requests"] == req["joined"]  # every joined request's chunks pair token by token
        assert lag["all_ms"]["samples"] == step["tokens"]["truth_sent"]
        assert lag["first_ms"]["samples"] == req["joined"] and lag["all_ms"]["max"] is not None
        assert step["server_tokens_per_s"] > 0
        assert step["step"]["truth"] == truth and step["truth_server"]["kind"] == truth
        assert step["truth_server"]["cpu_s"] > 0 and step["truth_server"]["sched"]
        assert "write_lateness_ms" in step["sim_health"] and "backpressure_ms" in step["sim_health"]
        assert step["health"]["present"] is True
        assert step["health"]["loop_lag_p99_ms"] is not None
        assert step["client"]["cpu_s"] > 0 and step["client"]["peak_rss_mb"] > 0
        # the whole tree includes the workers the load layer measured (reaped or not)
        assert step["client"]["harness_tree_cpu_s"] >= step["client"]["cpu_s"]
        assert isinstance(step["targets"], list) and step["targets"]
        cpu = step["machine_cpu"]  # where the cores went over the measured window (cpuwatch)
        assert cpu["cores"] == os.cpu_count() and cpu["window_s"] > 0
        shares = [
            cpu[k] for k in ("truth_server", "reader_threads", "locust_python", "other", "idle", "steal")
        ]
        assert all(v >= 0 for v in shares)
        assert sum(shares) == pytest.approx(cpu["cores"], rel=0.15)  # /proc/stat's ticks add up to the cores
        assert "cores in use over the measured window" in proc.stdout
        assert step["step"]["name"] in proc.stdout  # one printed row per step
        for worker in step["client"]["workers"]:  # closed loop: the reader thread sends the next request
            chained = worker["reader_responses"]["chained"]
            closed = step["step"]["kind"] == "concurrency"
            assert (0 < chained < worker["requests"]) if closed else chained == 0, (
                step["step"]["name"],
                worker,
            )
    # a quick step's window is a second or two of 10-ms ticks: the kinds show up over the steps together
    for kind in ("truth_server", "locust_python"):
        assert sum(s["machine_cpu"][kind] for s in report["steps"]) > 0, kind
    rate = next(s for s in report["steps"] if s["step"]["kind"] == "rate")
    assert rate["arrivals"]["truth"]["rate"] is not None and rate["arrivals"]["truth"]["cv"] is not None
    two = next(s for s in report["steps"] if s["step"]["processes"] == 2)
    assert len(two["client"]["workers"]) == 2
    assert isinstance(report["targets_missed"], list)


def test_the_sim_can_still_be_the_truth_side(tmp_path: Path) -> None:
    out = tmp_path / "fidelity.json"
    cmd = [
        sys.executable,
        "-m",
        "harness.fidelity",
        "--quick",
        "--truth",
        "sim",
        "--only",
        "c1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    step = json.loads(out.read_text())["steps"][0]
    assert step["step"]["truth"] == "sim" and step["requests"]["joined"] == step["requests"]["ok"] > 0
    assert step["tokens"]["exact"] is True and step["stamp_lag"]["all_ms"]["samples"] > 0
    assert "write_lateness_ms" not in step["sim_health"]  # the sim's log has no due times


def test_a_step_whose_sim_missed_its_own_timing_is_labelled_sim_limited() -> None:
    from harness.fidelity.cli import sim_keeping_time
    from harness.fidelity.steps import SimTiming

    def res(ttft: float, itl: float) -> dict:
        return {"ttft_ms": {"truth": {"p50": ttft}}, "itl_ms": {"truth": {"p50": itl}}}

    timing = SimTiming()
    ok = sim_keeping_time(res(100.4, 10.0), timing)
    assert ok["limited"] is False and abs(ok["ttft_p50_late_ms"] - 0.4) < 1e-9
    assert sim_keeping_time(res(1516.3, 10.0), timing)["limited"] is True
    assert sim_keeping_time(res(100.4, 1.1), timing)["limited"] is True


def _ports(monkeypatch: pytest.MonkeyPatch, first: int) -> list[int]:
    """Make ``free_port`` in the fidelity steps hand out ``first``, then really free ports; returns those given."""
    from harness.backends.process import free_port
    from harness.fidelity import steps

    given: list[int] = []

    def fake() -> int:
        given.append(first if not given else free_port())
        return given[-1]

    monkeypatch.setattr(steps, "free_port", fake)
    return given


def test_a_port_taken_before_the_server_binds_it_is_retried_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from harness.backends.process import ProcessRegistry
    from harness.fidelity.steps import SimTiming, start_sim

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        given = _ports(monkeypatch, taken.getsockname()[1])
        with ProcessRegistry() as registry:
            proc, base, _log = start_sim(tmp_path, SimTiming(), registry)
            proc.terminate(10.0)
    assert len(given) == 2 and base.endswith(f":{given[1]}")
    assert "address already in use" in (tmp_path / "sim.log").read_text().lower()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the C truth server")
def test_a_server_that_fails_for_another_reason_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.backends.base import BackendStartError
    from harness.backends.process import ProcessRegistry, free_port
    from harness.fidelity.steps import SimTiming, start_truth_server

    given = _ports(monkeypatch, free_port())
    with ProcessRegistry() as registry, pytest.raises(BackendStartError):
        start_truth_server(tmp_path, SimTiming(), registry, "c", "nice", congestion="no-such-cc")
    assert len(given) == 1
