"""Print the distributed-load figures: injected vs estimated clock offset, its uncertainty, and TTFT/ITL
p50/p99 of the same load from one host (2 local processes) and from 2 loopback workers, one of them
with an artificial clock offset.

Run from the checkout root: ``PYTHONPATH=. python tests/distributed_figures.py [OUT_DIR]``.
Each run is 200 requests at concurrency 4 against the simulator (TTFT 20 ms, ITL 5 ms, 16 tokens).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from conftest import start_sim  # noqa: E402
from distributed_workers import start_worker  # noqa: E402

from harness.backends.process import free_port  # noqa: E402
from harness.load.runner import run_step  # noqa: E402
from harness.load.wire import TOKEN_ENV  # noqa: E402
from harness.matrix import Step  # noqa: E402
from harness.metrics import compute_step_metrics  # noqa: E402
from harness.slo import Slo  # noqa: E402
from load_plans import sim_plan  # noqa: E402

OFFSET_NS = 30_000_000_000
TOKEN = "figures-token-0123456789"
REQUESTS, USERS = 200, 4


def metrics(records: Path):  # type: ignore[no-untyped-def]
    frame = pd.DataFrame(pq.read_table(records).to_pylist())
    return compute_step_metrics(frame, step=Step("s", "concurrency", float(USERS)), slo=Slo())


def main(out: Path) -> None:
    os.environ[TOKEN_ENV] = TOKEN
    out.mkdir(parents=True, exist_ok=True)
    sim = start_sim(out, ttft_ms=20, itl_ms=5)
    workers = []
    try:
        single = run_step(
            sim_plan(out / "single", base_url=sim.base_url, requests=REQUESTS, target=USERS, processes=2),
            out / "single" / "step",
        )
        port = free_port()
        workers = [
            start_worker(out / "host-a", port, TOKEN),
            start_worker(out / "host-b", port, TOKEN, offset_ns=OFFSET_NS),
        ]
        plan = sim_plan(
            out / "dist", base_url=sim.base_url, requests=REQUESTS, target=USERS,
            expect_workers=2, master_bind=f"127.0.0.1:{port}",
        )  # fmt: skip
        dist = run_step(plan, out / "dist" / "step")
    finally:
        for w in workers:
            w.kill()
        sim.stop()
    print("worker  injected_ms  estimated_ms  error_ms  uncertainty_ms  round_trip_ms")
    for c in dist.health["clock_sync"]:
        injected = OFFSET_NS / 1e6 if c["clock_offset_ms"] > 1000 else 0.0
        print(
            f"{c['index']:>6}  {injected:>11.3f}  {c['clock_offset_ms']:>12.3f}  "
            f"{c['clock_offset_ms'] - injected:>8.3f}  {c['clock_uncertainty_ms']:>14.3f}  {c['clock_round_trip_ms']:>13.3f}"
        )
    a, b = metrics(single.records_path), metrics(dist.records_path)
    print(f"\nrequests ok: single-host {a.requests_ok}, distributed {b.requests_ok}")
    print("metric         single-host  distributed  difference (ms)")
    for name in ("ttft_ms", "itl_ms"):
        for q in ("p50", "p99"):
            x, y = getattr(getattr(a, name), q), getattr(getattr(b, name), q)
            print(f"{name[:-3]:>4} {q:<4}  {x:>14.3f}  {y:>11.3f}  {y - x:>+15.3f}")
    print(f"req/s          {a.request_throughput:>11.2f}  {b.request_throughput:>11.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="tb-dist-figures-")))
