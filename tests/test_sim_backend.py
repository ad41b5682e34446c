"""``backend: sim`` starts, serves, reports itself as simulated, and is torn down."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from harness.backends.base import BackendStartError
from harness.backends.sim import SimBackend, sim_flags, validate_settings
from harness.matrix import expand_cells
from harness.scenario import parse_scenario
from harness.sim.writelog import read_write_log


def scenario(settings: dict, **server: object):
    return parse_scenario(
        {
            "name": "s",
            "servers": [
                {"name": "sim", "backend": "sim", "model": "org/fake-7b", "settings": settings, **server}
            ],
            "workload": {
                "prompt_tokens": 4,
                "output_tokens": 3,
                "steps": {"concurrency": [1]},
                "requests": 1,
            },
        }
    )


def test_start_serves_and_stop_tears_down(tmp_path: Path) -> None:
    (cell,) = expand_cells(
        scenario({"ttft_ms": 5, "itl_ms": 1, "tokens_per_chunk": 2, "fault": "slow_start:0.2"})
    )
    backend = SimBackend(home=tmp_path)
    handle = backend.start(cell, tmp_path)
    try:
        assert handle.simulated and handle.served_model == "org/fake-7b"
        assert handle.version is not None and handle.version.endswith("+sim.exact")
        assert handle.metrics_url == handle.base_url + "/metrics"
        r = httpx.post(
            handle.base_url + "/v1/completions",
            headers={"X-Request-Id": "r1"},
            json={
                "model": "org/fake-7b",
                "prompt": "a b c d",
                "max_tokens": 5,
                "ignore_eos": True,
                "stream": True,
            },
        )
        assert r.text.count('"text":') == 3  # 1 + 2 + 2 tokens
        pid = handle.pid
    finally:
        backend.stop()
    assert pid is not None and not psutil.pid_exists(pid)
    truth = read_write_log(tmp_path / "sim_writes.csv")
    assert truth["r1"].chunk_tokens == [1, 2, 2]
    assert (tmp_path / "server.log").exists()


def test_validate_settings_names_server_setting_and_value() -> None:
    server = scenario({"ttft_ms": "fast", "itl_msx": 3, "mode": "warp", "max_num_seqs": 8}).servers[0]
    errors = "\n".join(validate_settings(server, "c1"))
    assert "settings.ttft_ms: expected int or float, got 'fast'" in errors
    assert "settings.itl_msx: unknown sim setting" in errors
    assert "settings.mode: 'warp'" in errors
    assert "settings.max_num_seqs: an engine mode setting; add 'mode: engine'" in errors
    assert "server 'sim' (cell 'c1')" in errors
    assert validate_settings(scenario({"ttft_ms": [10, 20], "fault": "http_500"}).servers[0]) == []


def test_bad_settings_fail_start_before_launch(tmp_path: Path) -> None:
    (cell,) = expand_cells(scenario({"ttft_ms": -1}))
    backend = SimBackend()
    with pytest.raises(BackendStartError, match="ttft_ms"):
        backend.start(cell, tmp_path)
    assert backend.process is None
    backend.stop()


def test_sim_flags_split_fault_lists() -> None:
    flags = sim_flags({"ttft_ms": 10, "fault": "http_500, http_429", "fault_rate": 0.1, "jitter_ms": None})
    assert flags == ["--ttft-ms", "10", "--fault", "http_500", "--fault", "http_429", "--fault-rate", "0.1"]
