"""``make bench-scale``: how the cost of ``tokenbench report`` and ``gate`` grows with a run's size.

Why: a soak run or a long sweep produces millions of requests, and a report
or gate whose time or memory grows faster than the run would stop working
exactly on the runs that matter (issue 11 §3). This writes synthetic run
folders in the real on-disk format (per-step ``records.parquet`` through the
records writer, ``summary.json`` from ``compute_step_metrics``), 128 chunks per
request, at several sizes, then runs ``tokenbench report`` and ``tokenbench
gate`` on each as subprocesses and measures wall time and peak RSS
(``os.wait4``: that child's own ``ru_maxrss``). Targets at 1,000,000
requests: under 60 s and under 4 GB each.

Generation is vectorised (numpy → Arrow list arrays, written row group by row
group) and cached under ``reports/scale-bench/`` (git-ignored): a size is
generated once and reused. No simulator or server is involved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import atomic_path
from harness.matrix import Step
from harness.metrics import compute_step_metrics
from harness.records import RECORD_SCHEMA, read_records_frame
from harness.results import CellResult, RunSummary
from harness.rundir import RunDir
from harness.scenario import Slo

CHUNKS = 128
CELLS = ("scale-a", "scale-b")
STEPS = (8, 16, 32, 64)  # concurrency levels: 2 cells x 4 steps = 8 step files
ROW_GROUP = 65_536
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
TARGET_S = 60.0
TARGET_MB = 4096.0
FORMAT = 3  # bump when the generated layout changes, so cached runs are regenerated
SCENARIO = """name: scale-bench
servers:
  - {name: scale-a, backend: external, url: "http://127.0.0.1:1"}
workload: {prompt_tokens: 64, output_tokens: 128, steps: {concurrency: [8, 16, 32, 64]}, requests: 1}
slo: {ttft_p99_ms: 400, tpot_p99_ms: 40}
"""


class ScaleBenchError(RuntimeError):
    """A bench-scale run that could not be measured (a command failed)."""


@dataclass
class Measure:
    """One command's cost: wall seconds and the child's peak resident set size in MiB."""

    seconds: float
    peak_mb: float


def _step_table(rng: np.random.Generator, cell: str, step_id: str, n: int, first_id: int) -> pa.Table:
    """``n`` closed-loop requests of one step, 128 token chunks each, as a RECORD_SCHEMA table."""
    t0 = 1_000_000_000_000 + first_id * 50_000_000
    sched = t0 + np.cumsum(rng.integers(1_000_000, 20_000_000, n)).astype("int64")
    ttft = (rng.lognormal(np.log(80.0), 0.3, n) * 1e6).astype("int64")
    gaps = rng.gamma(4.0, 2.5e6, (n, CHUNKS)).astype("int64") + 100_000
    gaps[:, 0] = ttft
    times = sched[:, None] + np.cumsum(gaps, axis=1)
    failed = rng.random(n) < 0.002  # under the shipped policy's 0.5 % error-rate limit
    lengths = np.where(failed, 0, CHUNKS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("int32")
    flat_times = times[~failed].ravel()
    tokens = np.ones(flat_times.size, dtype="int32")
    first = np.where(failed, 0, times[:, 0])
    end = np.where(failed, sched + ttft, times[:, -1] + 200_000)
    strings = lambda v: pa.array(np.full(n, v, dtype=object), pa.string())  # noqa: E731
    columns = {
        "run_id": strings("scale"),
        "cell_id": strings(cell),
        "step_id": strings(step_id),
        "request_id": pa.array(np.arange(first_id, first_id + n, dtype="int64")),
        "worker": pa.array((np.arange(n) % 4).astype("int32")),
        "api": strings("completions"),
        "scheduled_ns": pa.array(sched),
        "sent_ns": pa.array(sched + 50_000),
        "end_ns": pa.array(end),
        "first_token_ns": pa.array(first, mask=failed),
        "chunk_times_ns": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_times)),
        "chunk_tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens)),
        "prompt_tokens": pa.array(np.full(n, 64, dtype="int64")),
        "output_tokens": pa.array(np.full(n, CHUNKS, dtype="int64"), mask=failed),
        "token_source": strings("usage"),
        "client_output_tokens": pa.array(np.full(n, CHUNKS, dtype="int64"), mask=failed),
        "requested_prompt_tokens": pa.array(np.full(n, 64, dtype="int64")),
        "requested_output_tokens": pa.array(np.full(n, CHUNKS, dtype="int64")),
        "status": pa.array(np.where(failed, 503, 200).astype("int32")),
        "error_class": pa.array(np.where(failed, "http_5xx", None), pa.string()),
        "error_message": pa.array(np.where(failed, "overloaded", None), pa.string()),
        "warmup": pa.array(np.zeros(n, dtype=bool)),
        "coalesced_chunks": pa.array(np.zeros(n, dtype="int32")),
        "simulated": pa.array(np.zeros(n, dtype=bool)),
        "retry_after": pa.nulls(n, pa.string()),
        # prewarmed connections (the default): no connect inside the step, every request reuses one
        "connect_ns": pa.nulls(n, RECORD_SCHEMA.field("connect_ns").type),
        "reused_connection": pa.array(np.ones(n, dtype=bool)),
    }
    return pa.table(columns, schema=RECORD_SCHEMA)


def generate(run_dir: Path, requests: int, seed: int = 0) -> Path:
    """Write a synthetic finished run of ``requests`` requests (cached: a finished folder is reused)."""
    marker = run_dir / ".generated"
    if marker.is_file() and marker.read_text() == f"{FORMAT}:{requests}:{seed}":
        return run_dir
    rng = np.random.default_rng(seed)
    per_step = max(1, requests // (len(CELLS) * len(STEPS)))
    cells, next_id = [], 0
    for cell in CELLS:
        steps = []
        for conc in STEPS:
            step = Step(f"c{conc}", "concurrency", float(conc))
            path = run_dir / "cells" / cell / "steps" / step.step_id / "records.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, pq.ParquetWriter(tmp, RECORD_SCHEMA) as writer:
                for start in range(0, per_step, ROW_GROUP):
                    n = min(ROW_GROUP, per_step - start)
                    writer.write_table(_step_table(rng, cell, step.step_id, n, next_id))
                    next_id += n
            frame = read_records_frame(path)
            steps.append(compute_step_metrics(frame, step=step, slo=Slo(ttft_p99_ms=400, tpot_p99_ms=40)))
            del frame
        cells.append(
            CellResult(
                cell_id=cell,
                server=cell,
                backend="external",
                model="tiny",
                identity=f"id-{cell}",
                status="ok",
                steps=steps,
            )
        )
    summary = RunSummary(
        run_id=run_dir.name,
        scenario="scale-bench",
        started_at="2026-01-01T00:00:00Z",
        complete=True,
        harness_version="scale-bench",
        cells=cells,
    )
    (run_dir / "summary.json").write_text(summary.model_dump_json(indent=1), encoding="utf-8")
    (run_dir / "scenario.yaml").write_text(SCENARIO, encoding="utf-8")
    (run_dir / "env.json").write_text(json.dumps({"host": "scale-bench"}), encoding="utf-8")
    RunDir(run_dir).merge()  # what a finished run has: the run-level records.parquet
    marker.write_text(f"{FORMAT}:{requests}:{seed}")
    return run_dir


def measure(args: list[str], ok: tuple[int, ...] = (0,)) -> Measure:
    """Run ``tokenbench ARGS`` as a child; its wall time and its own peak RSS (``wait4``).

    ``ok``: the exit codes that are a result (a gate's verdict), not a failure."""
    cmd = [sys.executable, "-c", "from harness.cli import main; main()", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise ScaleBenchError(
            f"tokenbench {' '.join(args)} exited {proc.returncode}:\n{out.decode()[-2000:]}"
        )
    return Measure(seconds, usage.ru_maxrss / 1024.0)  # Linux: KiB


def records_mb(run_dir: Path) -> float:
    """Size on disk of the run's per-step records (what a run writes; the report adds its own copy)."""
    return sum(p.stat().st_size for p in run_dir.glob("cells/*/steps/*/records.parquet")) / 2**20


def bench_size(root: Path, requests: int) -> dict[str, float]:
    """Generate (or reuse) one size, then measure ``report`` and ``gate`` on it."""
    run_dir = generate(root / f"run-{requests}", requests)
    # The first render, as at the end of a run: it merges the step files into records.parquet and
    # writes the exports (derived columns, records.csv) and the report.
    for name in ("records.parquet", "records.csv"):
        (run_dir / name).unlink(missing_ok=True)
    report = measure(["report", str(run_dir)])
    rerender = measure(["report", str(run_dir)])  # a re-render of the unchanged run
    baselines = root / "baselines"
    name = f"scale-{requests}"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from harness.cli import main; main()",
            "baseline",
            "save",
            str(run_dir),
            "--name",
            name,
            "--baselines",
            str(baselines),
        ],
        check=True,
        capture_output=True,
    )
    gate = measure(
        [
            "gate",
            "--baseline",
            name,
            "--baselines",
            str(baselines),
            "--run",
            str(run_dir),
            "--out",
            str(root / f"gate-{requests}"),
        ],
        ok=(0, 1, 3),
    )
    return {
        "requests": requests,
        "records_mb": records_mb(run_dir),
        "report_s": report.seconds,
        "report_mb": report.peak_mb,
        "rerender_s": rerender.seconds,
        "rerender_mb": rerender.peak_mb,
        "gate_s": gate.seconds,
        "gate_mb": gate.peak_mb,
    }


KEYS = ("report_s", "report_mb", "rerender_s", "rerender_mb", "gate_s", "gate_mb")


def table(rows: list[dict[str, float]]) -> str:
    """The Markdown table: per size, time and peak RSS, and each one's growth over the previous size.

    ``report``: the first render (merges the step files, writes records.csv and the derived columns);
    ``re-render``: ``tokenbench report`` again on the unchanged run.
    """
    head = (
        "| requests | records on disk (MB) | report s | report MB | re-render s | re-render MB | gate s | "
        "gate MB | growth per 10x (report s / MB, re-render s / MB, gate s / MB) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    prev: dict[str, float] | None = None
    for r in rows:
        growth = "-"
        if prev is not None:
            per10 = np.log(10) / np.log(r["requests"] / prev["requests"])
            growth = " / ".join(f"x{(r[k] / prev[k]) ** per10:.1f}" for k in KEYS)
        cells = " | ".join(f"{r[k]:.1f}" if k.endswith("_s") else f"{r[k]:.0f}" for k in KEYS)
        lines.append(f"| {int(r['requests']):,} | {r['records_mb']:.1f} | {cells} | {growth} |")
        prev = r
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.scale_bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="comma-separated request counts (default 10000,100000,1000000)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("reports/scale-bench"), help="cache of generated runs"
    )
    ns = parser.parse_args(argv)
    sizes = [int(s) for s in ns.sizes.split(",") if s.strip()]
    rows = []
    for size in sizes:
        row = bench_size(ns.dir, size)
        rows.append(row)
        print(
            f"{size:,} requests: report {row['report_s']:.1f} s / {row['report_mb']:.0f} MB, re-render "
            f"{row['rerender_s']:.1f} s / {row['rerender_mb']:.0f} MB, gate {row['gate_s']:.1f} s / "
            f"{row['gate_mb']:.0f} MB",
            flush=True,
        )
    print(table(rows))
    big = [r for r in rows if r["requests"] >= 1_000_000]
    misses = [
        f"{int(r['requests']):,}: {k} {r[k]:.1f}"
        for r in big
        for k in KEYS
        if r[k] > (TARGET_S if k.endswith("_s") else TARGET_MB)
    ]
    if misses:
        print("over target (60 s, 4096 MB): " + "; ".join(misses))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
