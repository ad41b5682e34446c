"""Pure parts of the sim: chunk schedules, fault specs, the write log format."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import httpx
import pytest

from harness.sim.faults import Fault, FaultError, FaultPlan, parse_fault, parse_schedule
from harness.sim.timing import MS, ExactTiming, chunk_offsets, chunk_sizes, natural_length
from harness.sim.writelog import WriteLog, read_write_log


def test_chunk_sizes_first_is_one_then_k() -> None:
    assert chunk_sizes(1, 4) == [1]
    assert chunk_sizes(10, 4) == [1, 4, 4, 1]
    assert chunk_sizes(5, 1) == [1] * 5
    assert chunk_sizes(0, 3) == []


def test_offsets_are_absolute_from_arrival() -> None:
    t = ExactTiming(ttft_ns=100 * MS, itl_ns=10 * MS)
    assert chunk_offsets(t, 4, random.Random(0)) == [100 * MS, 110 * MS, 120 * MS, 130 * MS]


def test_stalls_accumulate_and_jitter_does_not() -> None:
    stall = ExactTiming(ttft_ns=0, itl_ns=10 * MS, stall_every=2, stall_ns=50 * MS)
    assert chunk_offsets(stall, 5, random.Random(0)) == [0, 10 * MS, 70 * MS, 80 * MS, 140 * MS]
    jit = ExactTiming(ttft_ns=0, itl_ns=10 * MS, jitter_ns=3 * MS)
    offs = chunk_offsets(jit, 200, random.Random(1))
    assert all(0 <= o - i * 10 * MS < 3 * MS for i, o in enumerate(offs))
    assert offs == sorted(offs)
    assert offs == chunk_offsets(jit, 200, random.Random(1))


def test_extra_fault_stall_shifts_the_rest() -> None:
    t = ExactTiming(ttft_ns=0, itl_ns=MS)
    assert chunk_offsets(t, 4, random.Random(0), extra_stall_at=2, extra_stall_ns=7 * MS) == [
        0,
        MS,
        9 * MS,
        10 * MS,
    ]


def test_timing_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="tokens_per_chunk"):
        ExactTiming(ttft_ns=0, itl_ns=0, tokens_per_chunk=0)
    with pytest.raises(ValueError, match="ttft"):
        ExactTiming(ttft_ns=-1, itl_ns=0)


def test_natural_length_bounds() -> None:
    rng = random.Random(0)
    draws = [natural_length(rng, 20, 15) for _ in range(200)]
    assert min(draws) >= 15 and max(draws) <= 20
    assert natural_length(rng, 5, 50) == 5


def test_fault_parsing() -> None:
    assert parse_fault("stall:2.5") == Fault("stall", 2.5)
    assert parse_fault("http_429") == Fault("http_429")
    assert parse_schedule("http_500@3, stall:1@7") == {3: Fault("http_500"), 7: Fault("stall", 1.0)}
    for bad, msg in [
        ("stall", "needs a number"),
        ("http_500:3", "takes no value"),
        ("exit_after:0", "bad value"),
        ("boom", "unknown kind"),
    ]:
        with pytest.raises(FaultError, match=msg):
            parse_fault(bad)
    with pytest.raises(FaultError, match="KIND@N"):
        parse_schedule("http_500@0")


def test_fault_plan_splits_process_faults() -> None:
    plan = FaultPlan.build(0.0, ["slow_start:2", "exit_after:5"], "http_503@2", seed=0)
    assert plan.slow_start_s == 2 and plan.exit_after == 5
    assert plan.pick(1) is None and plan.pick(2) == Fault("http_503")
    with pytest.raises(FaultError, match="within"):
        FaultPlan.build(1.5, ["http_500"], "", seed=0)


def test_write_log_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    log = WriteLog(path)
    log.arrival("a", 1000, 7, "chat")
    log.chunk("a", 0, 1, 1100)
    log.chunk("a", 1, 3, 1200)
    log.end("a", 2, 4, 1200, "length")
    log.arrival("b", 1050, 2, "completions")
    log.gone("b", 0, 0, 1300)
    log.close()
    truth = read_write_log(path)
    assert list(truth) == ["a", "b"]
    a = truth["a"]
    assert (a.arrival_ns, a.prompt_tokens, a.api) == (1000, 7, "chat")
    assert a.chunk_tokens == [1, 3] and a.output_tokens == 4 and a.ttft_ns == 100 and a.itls_ns == [100]
    assert truth["b"].outcome == "client_gone" and truth["b"].ttft_ns is None
    (tmp_path / "bad.csv").write_text("x,y\n")
    with pytest.raises(ValueError, match="bad.csv: not a sim write log"):
        read_write_log(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("event,request_id,index,tokens,t_ns,note\nQ,a,0,1,5,\n")
    with pytest.raises(ValueError, match="bad2.csv:2: unknown event 'Q'"):
        read_write_log(tmp_path / "bad2.csv")


def test_sigterm_flushes_the_write_log_and_exits_zero(sim_server) -> None:
    sim = sim_server(ttft_ms=0, itl_ms=0)
    for i in range(3):
        httpx.post(
            sim.base_url + "/v1/completions",
            json={"prompt": "a", "max_tokens": 2, "ignore_eos": True},
            headers={"x-request-id": f"q{i}"},
        )
    os.killpg(sim.proc.pid, signal.SIGTERM)
    assert sim.proc.wait(5) == 0
    assert list(sim.truth()) == ["q0", "q1", "q2"]
