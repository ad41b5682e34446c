"""Every fault the sim offers really happens on the wire."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

STREAM = {"prompt": "a b", "max_tokens": 10, "ignore_eos": True, "stream": True}


def raw_post(port: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(data), data)
        )
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_http_error_faults_on_schedule(sim_server) -> None:
    sim = sim_server(ttft_ms=0, itl_ms=0, fault_schedule="http_429@1,http_500@2,http_503@3")
    with httpx.Client(base_url=sim.base_url) as c:
        codes = [c.post("/v1/completions", json=STREAM).status_code for _ in range(4)]
        assert codes == [429, 500, 503, 200]
        metrics = c.get("/metrics").text
    sim.stop()
    outcomes = [t.outcome for t in sim.truth().values()]
    assert outcomes == ["http_429", "http_500", "http_503", "length"]
    assert "vllm:request_success_total" in metrics


def test_reset_before_headers_sends_rst(sim_server) -> None:
    sim = sim_server(fault_schedule="reset_before_headers@1")
    with pytest.raises(ConnectionResetError):
        raw_post(sim.port, STREAM)
    assert httpx.post(sim.base_url + "/v1/completions", json=STREAM).status_code == 200


def test_disconnect_mid_stream_closes_without_terminator(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, fault_schedule="disconnect_mid_stream@1")
    raw = raw_post(sim.port, STREAM)
    assert b"transfer-encoding: chunked" in raw
    assert raw.count(b'"text":" tok"') == 6  # chunks 0..5 (the midpoint is chunk 5)
    assert not raw.endswith(b"0\r\n\r\n") and b"[DONE]" not in raw
    sim.stop()
    (t,) = sim.truth().values()
    assert t.outcome == "disconnect_mid_stream" and t.output_tokens == 6


def test_malformed_sse_line_is_injected_and_tokens_still_complete(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, fault_schedule="malformed_sse@1")
    r = httpx.post(sim.base_url + "/v1/completions", json=STREAM)
    events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
    bad = []
    for e in events[:-1]:
        try:
            json.loads(e)
        except json.JSONDecodeError:
            bad.append(e)
    assert len(bad) == 1
    assert r.text.count('"text":" tok"') == 10 and events[-1] == "[DONE]"


def test_stall_fault_pauses_mid_stream(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, fault_schedule="stall:0.3@1")
    httpx.post(sim.base_url + "/v1/completions", json=STREAM)
    sim.stop()
    (t,) = sim.truth().values()
    gaps = t.itls_ns
    # The stall is added to the chunk schedule (harness.sim.server), and these gaps are between actual
    # writes: a chunk before it that was written late (a busy machine) shortens the gap by that lateness
    # (a CI run saw 298.7 ms), so the bound leaves 10 ms for it; every other gap is 1 ms on the schedule.
    assert gaps[4] >= 290_000_000 and max(gaps[:4] + gaps[5:]) < 100_000_000


def test_fault_rate_is_seeded_and_draws_only_given_kinds(sim_server) -> None:
    def codes(seed: int) -> list[int]:
        sim = sim_server(ttft_ms=0, itl_ms=0, fault_rate=0.5, fault=["http_500", "http_429"], seed=seed)
        with httpx.Client(base_url=sim.base_url) as c:
            out = [c.post("/v1/completions", json=STREAM).status_code for _ in range(30)]
        sim.stop()
        return out

    first = codes(3)
    assert first == codes(3)
    assert set(first) == {200, 500, 429}


def test_slow_start_fails_health_for_n_seconds(sim_server) -> None:
    sim = sim_server(fault=["slow_start:0.6"], wait=False)
    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < 3:
        try:
            seen.append(httpx.get(sim.base_url + "/health", timeout=1).status_code)
        except httpx.ConnectError:
            pass
        if seen and seen[-1] == 200:
            break
        time.sleep(0.05)
    assert 503 in seen and seen[-1] == 200
    assert time.monotonic() - t0 >= 0.5


def test_exit_after_n_requests(sim_server) -> None:
    sim = sim_server(ttft_ms=0, itl_ms=0, fault=["exit_after:2"])
    for _ in range(2):
        assert httpx.post(sim.base_url + "/v1/completions", json=STREAM).status_code == 200
    assert sim.proc.wait(5) == 3
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.base_url + "/health")
    assert len(sim.truth()) == 2  # the log was flushed before exiting


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fault", "explode"], "unknown kind 'explode'"),
        (["--fault-schedule", "http_500@x"], "KIND@N"),
        (["--fault-rate", "0.5"], "no per-request --fault"),
        (["--tokens-per-chunk", "0"], "tokens_per_chunk"),
    ],
)
def test_bad_options_exit_naming_the_problem(args: list[str], needle: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "harness.sim", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2 and needle in r.stderr
