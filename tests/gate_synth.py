"""Synthetic run folders for the gate tests: records drawn from known distributions.

Why not the sim for these: the statistical properties (no false regression
over many seed pairs, a 15 % decode slowdown flagged) need many runs, and a
closed-loop model in numpy gives them in milliseconds while producing the
same files (summary.json, records.parquet, env.json, scenario.yaml) a real run
writes, so the loading path is exercised too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from harness.records import write_records
from harness.results import CellResult, HarnessHealth, RunSummary, StepMetrics

SCENARIO = {
    "name": "synth",
    "seed": 0,
    "servers": [{"name": "sim-a", "backend": "sim", "model": "tiny"}],
    "workload": {"prompt_tokens": 16, "output_tokens": 32, "steps": {"concurrency": [4]}, "duration_s": 20},
}

ENV = {
    "host": "ci",
    "cpu": {"model": "Synthetic CPU", "cores": 2},
    "gpu": None,
    "versions": {"python": "3.11", "harness": "0.1.0", "locust": "2", "backends": {"sim-a": "0.1.0"}},
}


def write_run(
    path: Path,
    *,
    seed: int,
    ttft_ms: float = 40.0,
    itl_ms: float = 10.0,
    jitter_ms: float = 2.0,
    error_rate: float = 0.0,
    concurrency: int = 4,
    duration_s: float = 20.0,
    output_tokens: int = 32,
    identity: str = "ident-a",
    cell_id: str = "sim-a",
    step_id: str = "c4",
    env: dict | None = None,
    cells: list[tuple[str, str]] | None = None,
    stall_rate: float = 0.0,
    stall_ms: float = 0.0,
    complete: bool = True,
    limited: bool = False,
) -> Path:
    """Write a closed-loop run: ``concurrency`` users back-to-back for ``duration_s`` seconds per cell.

    ``stall_rate``/``stall_ms``: that fraction of requests waits ``stall_ms`` longer for its first
    token (CPU contention on a shared machine); varying the rate from run to run is between-run
    noise that moves the TTFT tail but not the median. ``limited`` marks the step harness-limited.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    result_cells: list[CellResult] = []
    for cid, ident in cells or [(cell_id, identity)]:
        t0 = 1_000_000_000_000 + len(rows) * 1000
        end_limit = t0 + int(duration_s * 1e9)
        rid = 0
        for user in range(concurrency):
            t = t0 + user * 1000
            while t < end_limit:
                failed = rng.random() < error_rate
                ttft = max(1.0, ttft_ms + rng.normal(0, jitter_ms))
                if stall_rate and rng.random() < stall_rate:
                    ttft += stall_ms
                gaps = np.maximum(0.1, itl_ms + rng.normal(0, jitter_ms, output_tokens - 1))
                first = t + int(ttft * 1e6)
                chunks = [first] + list(first + np.cumsum(gaps * 1e6).astype(np.int64))
                end = int(chunks[-1]) + 100_000
                if failed:
                    end = t + int(ttft * 1e6)
                rows.append(
                    dict(
                        run_id=path.name,
                        cell_id=cid,
                        step_id=step_id,
                        request_id=rid,
                        worker=user,
                        api="completions",
                        scheduled_ns=t,
                        sent_ns=t,
                        end_ns=end,
                        first_token_ns=None if failed else first,
                        chunk_times_ns=[] if failed else [int(c) for c in chunks],
                        chunk_tokens=[] if failed else [1] * output_tokens,
                        prompt_tokens=16,
                        output_tokens=None if failed else output_tokens,
                        token_source="usage",
                        status=500 if failed else 200,
                        error_class="http_5xx" if failed else None,
                        warmup=False,
                    )
                )
                rid += 1
                t = end
        ok = [r for r in rows if r["cell_id"] == cid and r["error_class"] is None]
        n_cell = sum(1 for r in rows if r["cell_id"] == cid)
        step = StepMetrics(
            step_id=step_id,
            kind="concurrency",
            target=concurrency,
            duration_s=duration_s,
            requests_total=n_cell,
            requests_ok=len(ok),
            requests_warmup=0,
            output_tok_s=len(ok) * output_tokens / duration_s,
            request_throughput=len(ok) / duration_s,
            error_rate=(n_cell - len(ok)) / max(1, n_cell),
            harness=HarnessHealth(limited=limited, reasons=["client CPU 97%"] if limited else []),
        )
        result_cells.append(
            CellResult(
                cell_id=cid,
                server=cid,
                backend="sim",
                model="tiny",
                identity=ident,
                status="ok",
                steps=[step],
                env={"API_KEY": "secret-value"},
                simulated=True,
            )
        )
    path.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(
        run_id=path.name,
        scenario="synth",
        started_at="2026-01-01T00:00:00Z",
        complete=complete,
        interrupted=not complete,
        harness_version="0.1.0",
        cells=result_cells,
    )
    (path / "summary.json").write_text(summary.model_dump_json(indent=1))
    write_records(path / "records.parquet", rows)
    (path / "env.json").write_text(json.dumps(env or ENV))
    (path / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
    return path


def write_repeats(prefix: Path, seeds: list[int], **kw: object) -> list[Path]:
    """One run folder per seed (``prefix-0``, ``prefix-1``, …): repeats of one configuration."""
    return [write_run(prefix.with_name(f"{prefix.name}-{i}"), seed=s, **kw) for i, s in enumerate(seeds)]  # type: ignore[arg-type]
