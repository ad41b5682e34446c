"""Deterministic synthetic run folders, for the report's tests and for previews.

Why in the package: rendering a report needs a whole run folder (summary,
records, timeseries, env), and building one realistically takes more than a
fixture should hold. The numbers are generated from a seeded model of a
server (TTFT and ITL growing with concurrency), and the summary is computed
from the generated records, never typed in, so tests check the report
against data rather than against constants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.atomic import write_json, write_text
from harness.matrix import Step
from harness.metrics import compute_step_metrics, records_frame
from harness.records import RequestRecord, write_records
from harness.results import CellResult, MemorySummary, RunSummary, StepMetrics
from harness.scenario import Slo


@dataclass(frozen=True)
class SyntheticOptions:
    complete: bool = True
    failed_cell: bool = False
    simulated: bool = False
    gpu: bool = False
    prometheus: bool = True
    requests_per_step: int = 40
    output_tokens: int = 48
    concurrencies: tuple[int, ...] = (1, 4, 16)
    seed: int = 7


CELLS: tuple[tuple[str, float], ...] = (("vllm-a__max_num_seqs-8", 1.0), ("vllm-b__max_num_seqs-32", 1.35))
T0_NS = 5_000_000_000_000
SLO = Slo(ttft_p99_ms=400.0)


def _step_records(
    cell: str,
    factor: float,
    conc: int,
    t_ns: int,
    opts: SyntheticOptions,
    rng: np.random.Generator,
    first_id: int,
) -> list[RequestRecord]:
    out: list[RequestRecord] = []
    user_free = [t_ns] * conc
    for i in range(opts.requests_per_step):
        u = i % conc
        sched = user_free[u]
        ttft_ms = factor * 40 * (1 + conc / 4) * rng.lognormal(0, 0.25)
        itl_ms = factor * 12 * (1 + conc / 10) * rng.lognormal(0, 0.1, size=opts.output_tokens - 1)
        first = sched + int(ttft_ms * 1e6)
        chunks = [first, *(first + np.cumsum(itl_ms * 1e6).astype(np.int64)).tolist()]
        error = "timeout" if conc == max(opts.concurrencies) and i == 5 and factor > 1 else None
        out.append(
            RequestRecord(
                run_id="synthetic",
                cell_id=cell,
                step_id=f"c{conc}",
                request_id=first_id + i,
                worker=u,
                api="completions",
                scheduled_ns=sched,
                sent_ns=sched + 30_000,
                end_ns=chunks[-1] + 200_000,
                first_token_ns=None if error else first,
                chunk_times_ns=[] if error else chunks,
                chunk_tokens=[] if error else [1] * len(chunks),
                prompt_tokens=128,
                output_tokens=None if error else opts.output_tokens,
                token_source="usage",
                client_output_tokens=None if error else opts.output_tokens - (1 if i % 11 == 3 else 0),
                requested_prompt_tokens=128,
                requested_output_tokens=opts.output_tokens,
                status=0 if error else 200,
                error_class=error,
                error_message="read timeout" if error else None,
                warmup=i < 2,
                simulated=opts.simulated,
            )
        )
        user_free[u] = chunks[-1] + 1_000_000
    return out


def _step_metrics(recs: list[RequestRecord], conc: int, limited: bool) -> StepMetrics:
    """The summary numbers, computed by the same code a real run uses."""
    health = {
        "loop_lag_p99_ms": 2.0 + conc * (3.5 if limited else 0.2),
        "client_cpu_pct": 10.0 + conc * (5.5 if limited else 1.5),
        "coalesced_chunk_fraction": 0.0,
        "limited": limited,
        "reasons": ["event-loop lag p99 above 50 ms"] if limited else [],
    }
    step = Step(f"c{conc}", "concurrency", float(conc))
    return compute_step_metrics(records_frame(recs), step=step, slo=SLO, health=health)


def _timeseries(
    cell: str,
    idx: int,
    start: int,
    end: int,
    windows: list[tuple[str, int, int]],
    opts: SyntheticOptions,
    rng: np.random.Generator,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    base = (1.6 + 0.5 * idx) * 2**30
    for t in range(start, end, 250_000_000):
        step = next((s for s, a, b in windows if a <= t <= b), None)
        load = int(step[1:]) if step else 0
        frac = (t - start) / max(end - start, 1)

        def add(source: str, name: str, value: float, t: int = t, step: str | None = step) -> None:
            rows.append(
                {
                    "cell_id": cell,
                    "step_id": step,
                    "t_ns": t,
                    "source": source,
                    "name": name,
                    "value": float(value),
                    "labels": "",
                }
            )

        add("process", "rss_bytes", base * (1 + 0.25 * min(frac * 3, 1)) + rng.normal(0, 2e7))
        add("process", "cpu_percent", 50 + 10 * load)
        if opts.gpu:
            add("gpu", "gpu_used_bytes", (8 + 6 * min(frac * 3, 1)) * 2**30)
            add("gpu", "gpu_util", min(100, 20 * load))
        if opts.prometheus:
            add("prometheus", "vllm:kv_cache_usage_perc", min(1.0, 0.04 * load * (1 + idx)))
            add("prometheus", "vllm:num_requests_running", min(load, 8 * (1 + 3 * idx)))
            add("prometheus", "vllm:num_requests_waiting", max(0, load - 8 * (1 + 3 * idx)))
    return rows


def make_run(root: Path, options: SyntheticOptions | None = None) -> Path:
    """Write a synthetic run folder under ``root`` and return its path."""
    opts = options or SyntheticOptions()
    rng = np.random.default_rng(opts.seed)
    run_dir = root / "20250101T000000Z-synthetic"
    run_dir.mkdir(parents=True, exist_ok=True)
    records: list[RequestRecord] = []
    samples: list[dict[str, object]] = []
    cells: list[CellResult] = []
    t = T0_NS
    for idx, (cell_id, factor) in enumerate(CELLS):
        cell_start = t
        t += 3_000_000_000  # launch to first step
        steps: list[StepMetrics] = []
        windows: list[tuple[str, int, int]] = []
        for conc in opts.concurrencies:
            recs = _step_records(cell_id, factor, conc, t, opts, rng, len(records))
            records += recs
            limited = idx == 1 and conc == max(opts.concurrencies)
            steps.append(_step_metrics(recs, conc, limited))
            end = max(r.end_ns for r in recs)
            windows.append((f"c{conc}", t, end))
            t = end + 1_000_000_000
        samples += _timeseries(cell_id, idx, cell_start, t, windows, opts, rng)
        peak = max(float(s["value"]) for s in samples if s["cell_id"] == cell_id and s["name"] == "rss_bytes")
        cells.append(
            CellResult(
                cell_id=cell_id,
                server=cell_id.split("__")[0],
                backend="sim" if opts.simulated else "vllm",
                model="Qwen/Qwen2.5-0.5B-Instruct",
                settings={"max_num_seqs": 8 * (1 + 3 * idx)},
                identity=f"{idx:016x}",
                status="ok",
                launch_s=24.5 + idx,
                version="0.32.0",
                simulated=opts.simulated,
                command=[
                    "python",
                    "-m",
                    "vllm.entrypoints.openai.api_server",
                    "--model",
                    "Qwen/Qwen2.5-0.5B-Instruct",
                    "--max-num-seqs",
                    str(8 * (1 + 3 * idx)),
                    "--api-key",
                    "sk-secret-123",
                ],
                env={"VLLM_CPU_KVCACHE_SPACE": "4", "HF_TOKEN": "hf_secret_456"},
                steps=steps,
                memory=MemorySummary(
                    peak_rss_mb=peak / 2**20, steady_rss_mb=0.97 * peak / 2**20, gpu_present=opts.gpu
                ),
            )
        )
    if opts.failed_cell:
        cells.append(
            CellResult(
                cell_id="vllm-c__max_num_seqs-64",
                server="vllm-c",
                backend="vllm",
                model="Qwen/Qwen2.5-0.5B-Instruct",
                identity="00000000000000ff",
                status="failed",
                launch_s=None,
                version="0.32.0",
                error="server exited with code 1 before becoming healthy",
                log_tail=[
                    "INFO loading model",
                    "ERROR torch.OutOfMemoryError: cannot allocate KV cache (64 seqs)",
                ],
                command=["python", "-m", "vllm.entrypoints.openai.api_server", "--max-num-seqs", "64"],
            )
        )
    if not opts.complete:
        cells.append(
            CellResult(
                cell_id="vllm-d__max_num_seqs-128",
                server="vllm-d",
                backend="vllm",
                model="Qwen/Qwen2.5-0.5B-Instruct",
                identity="00000000000000fe",
                status="pending",
            )
        )
    summary = RunSummary(
        run_id=run_dir.name,
        scenario="synthetic",
        started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:05:00Z" if opts.complete else None,
        complete=opts.complete,
        interrupted=not opts.complete,
        harness_version="0.1.0",
        cells=cells,
    )
    write_json(run_dir / "summary.json", summary.model_dump(mode="json"))
    write_records(run_dir / "records.parquet", records)
    pd.DataFrame(samples).to_parquet(run_dir / "timeseries.parquet", index=False)
    write_text(run_dir / "scenario.yaml", "name: synthetic\nservers: []\n")
    env = {
        "host": "bench-host",
        "os": "Linux",
        "cpu": {"model": "Synthetic CPU", "logical_cores": 2},
        "memory_gb": 24.0,
        "gpu": {"name": "H100", "driver": "550"} if opts.gpu else None,
        "versions": {"python": "3.11", "harness": "0.1.0", "backends": {"vllm": "0.32.0"}},
    }
    write_text(run_dir / "env.json", json.dumps(env, indent=2))
    return run_dir
