"""Prometheus text for the sim's ``/metrics``, named as the real server names them.

Why real names: the harness's telemetry sampler is written against vLLM's and
TGI's metric names; if the sim used its own, simulated runs would exercise a
different code path from real ones. Counters follow the text-format
convention (``# TYPE vllm:prompt_tokens counter`` then ``..._total``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SimCounters:
    """Live counts, owned by one server instance and read by ``render``."""

    running: int = 0
    waiting: int = 0
    requests_total: int = 0
    success_total: dict[str, int] = field(default_factory=dict)
    failure_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    preemptions_total: int = 0
    kv_cache_usage: float = 0.0
    vram_bytes: dict[str, float] = field(default_factory=dict)
    kv_cache_bytes_used: float | None = None
    engine_steps_total: int | None = None
    engine_lag_s_total: float = 0.0


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(c: SimCounters, *, api: str, mode: str, model: str) -> str:
    """The whole exposition text for one scrape."""
    m = _esc(model)
    lines = [
        "# HELP tokenbench_sim_info The simulated backend and its timing mode.",
        "# TYPE tokenbench_sim_info gauge",
        f'tokenbench_sim_info{{mode="{_esc(mode)}",api="{_esc(api)}",model_name="{m}"}} 1',
    ]
    if api == "tgi":
        lab = ""
        lines += [
            "# TYPE tgi_queue_size gauge",
            f"tgi_queue_size{lab} {c.waiting}",
            "# TYPE tgi_batch_current_size gauge",
            f"tgi_batch_current_size{lab} {c.running}",
            "# TYPE tgi_request_count counter",
            f"tgi_request_count{lab} {c.requests_total}",
            "# TYPE tgi_request_success counter",
            f"tgi_request_success{lab} {sum(c.success_total.values())}",
            "# TYPE tgi_request_failure counter",
            f"tgi_request_failure{lab} {c.failure_total}",
            "# TYPE tgi_request_input_length_sum counter",
            f"tgi_request_input_length_sum{lab} {c.prompt_tokens_total}",
            "# TYPE tgi_request_generated_tokens_sum counter",
            f"tgi_request_generated_tokens_sum{lab} {c.generation_tokens_total}",
        ]
    else:
        lab = f'{{engine="0",model_name="{m}"}}'
        lines += [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{lab} {c.running}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{lab} {c.waiting}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{lab} {c.kv_cache_usage}",
            "# HELP vllm:num_preemptions Cumulative number of preemptions from the engine.",
            "# TYPE vllm:num_preemptions counter",
            f"vllm:num_preemptions_total{lab} {c.preemptions_total}",
            "# HELP vllm:prompt_tokens Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens counter",
            f"vllm:prompt_tokens_total{lab} {c.prompt_tokens_total}",
            "# HELP vllm:generation_tokens Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens counter",
            f"vllm:generation_tokens_total{lab} {c.generation_tokens_total}",
            "# HELP vllm:request_success Count of successfully processed requests.",
            "# TYPE vllm:request_success counter",
        ]
        for reason in sorted(c.success_total) or ["length"]:
            lines.append(
                f'vllm:request_success_total{{engine="0",finished_reason="{reason}",model_name="{m}"}} '
                f"{c.success_total.get(reason, 0)}"
            )
    for part, value in sorted(c.vram_bytes.items()):
        # One gauge per component (not a label) so each reads as its own memory panel series.
        name = f"tokenbench_sim_vram_{part}_bytes"
        lines += [
            f"# HELP {name} Modelled GPU memory: {part.replace('_', ' ')} (engine mode; simulated).",
            f"# TYPE {name} gauge",
            f"{name} {value:.0f}",
        ]
    if c.engine_steps_total is not None:
        # Self-diagnosis: how late the modelled iterations really ended (CPU-starved sim => lag grows).
        lines += [
            "# HELP tokenbench_sim_engine_steps_total Modelled engine iterations run.",
            "# TYPE tokenbench_sim_engine_steps_total counter",
            f"tokenbench_sim_engine_steps_total {c.engine_steps_total}",
            "# HELP tokenbench_sim_engine_lag_seconds_total Summed lateness of iteration ends vs the model.",
            "# TYPE tokenbench_sim_engine_lag_seconds_total counter",
            f"tokenbench_sim_engine_lag_seconds_total {c.engine_lag_s_total:.6f}",
        ]
    if c.kv_cache_bytes_used is not None:
        lines += [
            "# HELP tokenbench_sim_kv_cache_used_bytes Modelled KV-cache bytes held by sequences.",
            "# TYPE tokenbench_sim_kv_cache_used_bytes gauge",
            f"tokenbench_sim_kv_cache_used_bytes {c.kv_cache_bytes_used:.0f}",
        ]
    return "\n".join(lines) + "\n"
