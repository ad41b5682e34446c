"""Engine mode for real: a sim process streams modelled tokens to HTTP clients."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.backends.base import BackendStartError
from harness.backends.sim import SimBackend, validate_settings
from harness.matrix import expand_cells
from harness.scenario import parse_scenario
from harness.sim.hardware import get_gpu, get_model
from harness.sim.roofline import EngineConfig, Roofline, step_cost

ENGINE = {"mode": "engine", "gpu": "a10g-24gb", "model_profile": "mistral-7b", "max_model_len": 4096}


def metrics(base_url: str) -> dict[str, float]:
    """Sample name (as written, labels dropped) -> value; the text must also parse as Prometheus."""
    text = httpx.get(base_url + "/metrics").text
    assert list(text_string_to_metric_families(text))
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0]] = float(value)
    return out


def stream_completion(base_url: str, rid: str, max_tokens: int, out: dict[str, int]) -> None:
    body = {"prompt": "w " * 64, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", base_url + "/v1/completions", json=body, headers={"X-Request-Id": rid}, timeout=60
    ) as r:
        out[rid] = sum(1 for line in r.iter_lines() if line.startswith("data: {"))


def test_engine_streams_tokens_and_metrics_show_the_modelled_state(sim_server) -> None:
    # time_scale 0.25: a ~25 ms modelled step lasts ~100 ms, long enough to scrape mid-run.
    sim = sim_server(**ENGINE, max_num_seqs=2, time_scale=0.25)
    counts: dict[str, int] = {}
    threads = [
        threading.Thread(target=stream_completion, args=(sim.base_url, f"r{i}", 12, counts)) for i in range(4)
    ]
    for t in threads:
        t.start()
    seen: list[dict[str, float]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        m["vllm:num_requests_running"] == 2 and m["vllm:num_requests_waiting"] == 2 for m in seen
    ):
        seen.append(metrics(sim.base_url))
        time.sleep(0.02)
    for t in threads:
        t.join(30)
    assert counts == {f"r{i}": 12 for i in range(4)}
    busy = [m for m in seen if m["vllm:num_requests_running"] == 2 and m["vllm:num_requests_waiting"] == 2]
    assert busy, "never saw 2 running and 2 waiting with max_num_seqs=2"
    assert 0 < busy[0]["vllm:kv_cache_usage_perc"] < 1
    m = metrics(sim.base_url)
    assert m["tokenbench_sim_vram_weights_bytes"] == 14_496_047_104
    parts = ("weights", "kv_cache", "overhead")
    assert m["tokenbench_sim_vram_total_bytes"] == pytest.approx(
        sum(m[f"tokenbench_sim_vram_{p}_bytes"] for p in parts), abs=4
    )
    assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:generation_tokens_total"] == 48
    assert m["tokenbench_sim_engine_steps_total"] >= 12 and m["tokenbench_sim_engine_lag_seconds_total"] >= 0
    assert httpx.get(sim.base_url + "/version").json()["version"].endswith("+sim.engine")
    sim.stop()
    truth = sim.truth()
    assert [truth[f"r{i}"].output_tokens for i in range(4)] == [12] * 4
    # Decode gaps follow the roofline (two 64-token sequences on an A10G), stretched by 1/time_scale.
    cfg = EngineConfig(gpu=get_gpu("a10g-24gb"), model=get_model("mistral-7b"), max_model_len=4096)
    modelled = Roofline.of(cfg).step_s(step_cost([(1, 70), (1, 70)])) / 0.25
    gaps = [g / 1e9 for r in truth.values() for g in r.itls_ns]
    assert statistics.median(gaps) == pytest.approx(modelled, rel=0.1)


def test_engine_rejects_a_request_longer_than_the_context(sim_server) -> None:
    sim = sim_server(**{**ENGINE, "max_model_len": 128})
    r = httpx.post(sim.base_url + "/v1/completions", json={"prompt": "w " * 100, "max_tokens": 50})
    assert r.status_code == 400 and "maximum context length is 128" in r.json()["message"]
    r = httpx.post(sim.base_url + "/v1/completions", json={"prompt": "w " * 10, "max_tokens": 5})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5


def test_engine_tgi_api_streams_and_uses_tgi_metric_names(sim_server) -> None:
    sim = sim_server(
        **ENGINE, api="tgi", max_batch_total_tokens=8192, max_batch_prefill_tokens=512, time_scale=4
    )
    with httpx.stream(
        "POST",
        sim.base_url + "/generate_stream",
        json={"inputs": "a b c", "parameters": {"max_new_tokens": 7}},
        timeout=30,
    ) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert len(events) == 7 and '"generated_tokens":7' in events[-1]
    m = metrics(sim.base_url)
    assert m["tgi_request_generated_tokens_sum"] == 7 and m["tgi_queue_size"] == 0
    assert "tokenbench_sim_vram_kv_cache_bytes" in m
    # --max-batch-total-tokens caps the KV cache: 8192 tokens x 128 KiB.
    assert m["tokenbench_sim_vram_kv_cache_bytes"] == 8192 * 131_072


def test_client_disconnect_frees_the_sequence(sim_server) -> None:
    sim = sim_server(**ENGINE, time_scale=0.5)
    body = {"prompt": "w w", "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", sim.base_url + "/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break
    deadline = time.monotonic() + 5
    while metrics(sim.base_url)["vllm:num_requests_running"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    m = metrics(sim.base_url)
    assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "engine"], "--mode engine needs --gpu"),
        (["--mode", "engine", "--gpu", "a10"], "gpu 'a10': unknown GPU profile"),
        (["--mode", "engine", "--gpu", "a10g-24gb"], "matches no model profile"),
        (["--gpu", "a10g-24gb"], "--gpu: only used with --mode engine"),
        (
            ["--mode", "engine", "--gpu", "a10g-24gb", "--model-profile", "llama-3.1-70b"],
            "does not fit on a10g-24gb",
        ),
        (
            ["--mode", "engine", "--gpu", "l4-24gb", "--model-profile", "mistral-7b", "--fault", "stall:1"],
            "--fault stall: exact mode only",
        ),
        (
            ["--mode", "engine", "--gpu", "l4-24gb", "--model-profile", "mistral-7b", "--time-scale", "0"],
            "--time-scale 0.0: must be > 0",
        ),
    ],
)
def test_bad_engine_options_exit_naming_the_problem(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sim", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


# backend: sim with mode: engine ---------------------------------------------------------


def scenario(settings: dict, model: str = "mistralai/Mistral-7B-Instruct-v0.3"):
    return parse_scenario(
        {
            "name": "s",
            "servers": [{"name": "sim", "backend": "sim", "model": model, "settings": settings}],
            "workload": {
                "prompt_tokens": 4,
                "output_tokens": 3,
                "steps": {"concurrency": [1]},
                "requests": 1,
            },
        }
    )


def test_backend_engine_mode_defaults_profile_from_model(tmp_path: Path) -> None:
    (cell,) = expand_cells(scenario({"mode": "engine", "gpu": "a10g-24gb", "max_model_len": 4096}))
    backend = SimBackend()
    handle = backend.start(cell, tmp_path)
    try:
        assert handle.simulated and handle.version is not None and handle.version.endswith("+sim.engine")
        assert "--model-profile" in handle.command and "mistral-7b" in handle.command
        r = httpx.post(
            handle.base_url + "/v1/completions",
            json={"prompt": "a b", "max_tokens": 3, "ignore_eos": True},
            timeout=10,
        )
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        backend.stop()


def test_backend_refuses_a_config_that_does_not_fit_before_launch(tmp_path: Path) -> None:
    (cell,) = expand_cells(scenario({"mode": "engine", "gpu": "a10g-24gb"}, model="meta-llama/Llama-3.1-70B"))
    backend = SimBackend()
    with pytest.raises(BackendStartError, match="llama-3.1-70b does not fit on a10g-24gb"):
        backend.start(cell, tmp_path)
    assert backend.process is None


def test_backend_validates_engine_settings_by_name() -> None:
    server = scenario(
        {
            "mode": "engine",
            "gpu": "a10",
            "quantization": "int3",
            "gpu_memory_utilization": 1.2,
            "max_num_seqs": [0, 32],
            "max_batch_total_tokens": 100,
            "time_scale": 0,
        },
        model="org/unknown",
    ).servers[0]
    errors = "\n".join(validate_settings(server))
    assert "settings.gpu: 'a10' is not one of a10g-24gb" in errors
    assert "settings.quantization: 'int3' is not one of none, fp8, awq, gptq" in errors
    assert "settings.gpu_memory_utilization: must be in (0, 1], got 1.2" in errors
    assert "settings.max_num_seqs: must be >= 1, got 0" in errors
    assert "settings.max_batch_total_tokens: a TGI setting; only with api: tgi" in errors
    assert "settings.time_scale: must be > 0" in errors
    assert "settings.model_profile: model 'org/unknown' matches no profile" in errors
    ok = scenario(
        {"mode": "engine", "gpu": "h100-80gb", "quantization": ["none", "awq"], "max_num_seqs": [32, 128]}
    )
    assert validate_settings(ok.servers[0]) == []
    assert "settings.gpu: required with mode: engine" in "\n".join(
        validate_settings(scenario({"mode": "engine"}).servers[0])
    )
