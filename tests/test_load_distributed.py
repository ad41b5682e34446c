"""Distributed steps over loopback: a master (``run_step``) and ``tokenbench worker`` processes that run
from other working directories, against the simulator.

What is checked: the workers' records reach the master and are mapped to its clock (one worker runs
with an artificial 30 s clock offset; the server's own write log, on the master's clock, is the
truth); the merged metrics equal what a single clock would give within the offset estimate's
uncertainty; a worker that dies mid-step is flagged and its records so far are kept; a worker with a
wrong token is refused; no secret reaches a worker's folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from distributed_workers import WorkerProcess, start_worker

from harness.backends.process import free_port
from harness.load.plan import LoadPlan, PlanError
from harness.load.runner import LoadRunError, run_step
from harness.load.wire import TOKEN_ENV
from harness.matrix import Step, expand_cells
from harness.metrics import compute_step_metrics
from harness.scenario import Scenario
from harness.slo import Slo
from load_plans import sim_plan

TOKEN = "worker-token-0123456789"
SECRET = "Bearer dist-secret-abcdef987654"
OFFSET_NS = 30_000_000_000  # the simulated remote worker's clock runs 30 s ahead


@pytest.fixture
def workers() -> Any:
    started: list[WorkerProcess] = []

    def factory(cwd: Path, port: int, token: str | None, **kw: Any) -> WorkerProcess:
        w = start_worker(cwd, port, token, **kw)
        started.append(w)
        return w

    yield factory
    for w in started:
        w.kill()


def _plan(tmp_path: Path, base_url: str, port: int, **kw: Any) -> LoadPlan:
    fields: dict[str, Any] = dict(expect_workers=2, master_bind=f"127.0.0.1:{port}", worker_wait_s=60.0)
    fields.update(kw)
    return sim_plan(tmp_path, base_url=base_url, **fields)


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def _by_worker(health: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["index"]: c for c in health["clock_sync"]}


def test_two_remote_workers_merge_onto_the_masters_clock(
    tmp_path: Path, sim_server: Any, workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sim = sim_server(ttft_ms=20, itl_ms=5)
    port = free_port()
    remote = [
        workers(tmp_path / "host-a", port, TOKEN),
        workers(tmp_path / "host-b", port, TOKEN, offset_ns=OFFSET_NS),
    ]
    plan = _plan(tmp_path / "run", sim.base_url, port, requests=40, target=4)
    out = run_step(plan, tmp_path / "run" / "step", headers={"Authorization": SECRET})
    rows = _rows(out.records_path)

    # Every request of the plan, once, from both workers; ids unique.
    assert len(rows) == 40 and all(r["error_class"] is None for r in rows)
    assert {r["worker"] for r in rows} == {0, 1}
    assert len({r["request_id"] for r in rows}) == 40
    health = out.health
    assert [w["index"] for w in health["workers"]] == [0, 1]
    assert sum(w["requests"] for w in health["workers"]) == 40

    # The offset estimate brackets the injected offset (0 for the other worker).
    clocks = _by_worker(health)
    shifted = next(i for i, c in clocks.items() if c["clock_offset_ms"] > 1000)
    for index, clock in clocks.items():
        true_ms = OFFSET_NS / 1e6 if index == shifted else 0.0
        assert abs(clock["clock_offset_ms"] - true_ms) <= clock["clock_uncertainty_ms"], clock
        assert clock["clock_exchanges"] >= 4 and clock["lost"] is False
    assert all("clock_offset_ms" in w for w in health["workers"])

    # Mapped stamps agree with the server's own (same host, the master's clock): each chunk is read
    # after the server wrote it, less the estimate's uncertainty, and well within a second of it.
    sim.stop()
    truth = sim.truth()
    for index in (0, 1):
        gaps = [
            c - s
            for r in rows
            if r["worker"] == index
            for c, s in zip(
                r["chunk_times_ns"], truth[f"{plan.step_id}-{r['request_id']}"].chunk_times_ns, strict=True
            )
        ]
        slack_ns = clocks[index]["clock_uncertainty_ms"] * 1e6 + 2_000_000  # + the server's stamp after send
        assert np.median(gaps) >= -slack_ns, (index, np.median(gaps))
        assert np.percentile(gaps, 90) < 500_000_000, (index, np.percentile(gaps, 90))

    # The step's metrics equal those of one clock (the offset corrected exactly) within the uncertainty.
    frame = pd.DataFrame(rows)
    exact = frame.copy()
    error_ns = int(round(clocks[shifted]["clock_offset_ms"] * 1e6)) - OFFSET_NS  # estimate - truth
    mask = exact["worker"] == shifted
    for name in ("scheduled_ns", "sent_ns", "end_ns", "first_token_ns"):
        exact.loc[mask, name] = exact.loc[mask, name] + error_ns
    exact.loc[mask, "chunk_times_ns"] = exact.loc[mask, "chunk_times_ns"].map(
        lambda ts: [t + error_ns for t in ts]
    )
    step = Step(plan.step_id, "concurrency", 4.0)
    got, want = (compute_step_metrics(f, step=step, slo=Slo()) for f in (frame, exact))
    unc_s = clocks[shifted]["clock_uncertainty_ms"] / 1e3
    assert abs(got.duration_s - want.duration_s) <= 2 * unc_s + 1e-9
    assert got.requests_ok == want.requests_ok == 40
    rel = 2 * unc_s / want.duration_s + 1e-9
    assert got.request_throughput == pytest.approx(want.request_throughput, rel=rel)
    assert got.output_tok_s == pytest.approx(want.output_tok_s, rel=rel)
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):  # per-request latencies are offset-free
        assert getattr(got, name).model_dump() == pytest.approx(getattr(want, name).model_dump())

    # Same load on one host: same requests, same tokens (the figures: scripts/distributed_figures.py).
    single = run_step(
        sim_plan(
            tmp_path / "single",
            base_url=sim_server(ttft_ms=20, itl_ms=5).base_url,
            requests=40,
            target=4,
            processes=2,
        ),
        tmp_path / "single" / "step",
    )
    single_rows = _rows(single.records_path)
    assert len(single_rows) == len(rows)
    assert sum(r["output_tokens"] for r in single_rows) == sum(r["output_tokens"] for r in rows)

    # The workers' folders hold their logs only: no records, no plan, no headers, no token.
    for w in remote:
        assert w.proc.wait(30) == 0, w.output()
        assert sorted(p.name for p in w.cwd.iterdir()) == ["worker.log"]
        assert SECRET not in w.output() and TOKEN not in w.output()
    for path in (tmp_path / "run" / "step").iterdir():
        data = path.read_bytes()
        assert SECRET.encode() not in data and TOKEN.encode() not in data, path


def test_a_worker_that_dies_mid_step_is_flagged_and_its_records_kept(
    tmp_path: Path, sim_server: Any, workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sim = sim_server(ttft_ms=20, itl_ms=5)
    port = free_port()
    doomed = workers(tmp_path / "host-a", port, TOKEN)
    workers(tmp_path / "host-b", port, TOKEN)
    plan = _plan(tmp_path / "run", sim.base_url, port, duration_s=8.0, target=2)
    killed_at: list[float] = []

    def kill_when_measuring() -> None:
        # Once both workers run and parts came in (flushes every 2 s), kill one.
        if not killed_at and "took step" in doomed.output() and _progress_elapsed(plan) > 3.5:
            doomed.kill()
            killed_at.append(time.monotonic())

    out = run_step(plan, tmp_path / "run" / "step", on_wait=kill_when_measuring)
    assert killed_at, "the worker was never killed"
    rows = _rows(out.records_path)
    dead = next(c["index"] for c in out.health["clock_sync"] if c["lost"])
    assert {r["worker"] for r in rows} == {0, 1}
    assert sum(r["worker"] == dead for r in rows) >= 5  # its records so far were kept
    assert out.health["limited"] is True
    assert any(f"load worker {dead}" in r and "lost mid-step" in r for r in out.health["reasons"])
    assert any("never reported" in r for r in out.health["reasons"])
    assert [w["index"] for w in out.health["workers"]] == [1 - dead]


def _progress_elapsed(plan: LoadPlan) -> float:
    path = Path(plan.records_path).with_name("progress.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0.0
    return float(data.get("elapsed_s") or 0.0)


def test_a_worker_with_a_wrong_token_is_refused(
    tmp_path: Path, sim_server: Any, workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sim = sim_server(ttft_ms=10, itl_ms=2)
    port = free_port()
    intruder = workers(tmp_path / "intruder", port, "not-the-token-42")
    plan = _plan(tmp_path / "run", sim.base_url, port, expect_workers=1, requests=6, target=2)
    honest: list[WorkerProcess] = []

    def admit_honest_later() -> None:
        if not honest and intruder.proc.poll() is not None:
            honest.append(workers(tmp_path / "honest", port, TOKEN))

    out = run_step(plan, tmp_path / "run" / "step", on_wait=admit_honest_later)
    assert intruder.proc.wait(30) == 2
    assert "refused this worker" in intruder.output() and "wrong worker token" in intruder.output()
    assert sorted(p.name for p in intruder.cwd.iterdir()) == ["worker.log"]  # it never got the plan
    assert len(_rows(out.records_path)) == 6
    assert out.health["refused_workers"] == 1
    assert [c["index"] for c in out.health["clock_sync"]] == [0]
    log = out.log_path.read_text(errors="replace")
    assert "wrong worker token" in log and TOKEN not in log and "not-the-token-42" not in log


def test_no_worker_in_time_fails_the_step_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    plan = _plan(tmp_path, "http://127.0.0.1:1", free_port(), expect_workers=1, requests=2, worker_wait_s=2.0)
    with pytest.raises(LoadRunError) as err:
        run_step(plan, tmp_path / "step")
    assert "Gave up waiting for workers" in str(err.value)
    assert not Path(plan.records_path).exists()


def test_a_distributed_plan_needs_the_masters_address(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="master_bind: a distributed step needs the master's host:port"):
        sim_plan(tmp_path, requests=2, expect_workers=1)
    with pytest.raises(PlanError, match="master_bind"):
        sim_plan(tmp_path, requests=2, expect_workers=1, master_bind="localhost")
    plan = sim_plan(tmp_path, requests=2, expect_workers=2, master_bind="0.0.0.0:5557", processes=3)
    assert (plan.local_workers, plan.workers_expected) == (3, 5)
    assert sim_plan(tmp_path, requests=2, expect_workers=2, master_bind="0.0.0.0:5557").workers_expected == 2


def test_distributed_is_not_in_the_cell_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    base = {
        "name": "t",
        "servers": [{"name": "a", "backend": "sim", "model": "m"}],
        "workload": {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]}, "duration_s": 5},
    }
    spread = json.loads(json.dumps(base))
    spread["workload"]["distributed"] = {"expect_workers": 3, "bind": "0.0.0.0:5557"}
    one, many = (expand_cells(Scenario.model_validate(d)) for d in (base, spread))
    assert [c.identity for c in one] == [c.identity for c in many]
    assert Scenario.model_validate(spread).workload.distributed.wait_s == 120.0  # type: ignore[union-attr]


def test_the_worker_manifest_runs_tokenbench_worker_with_the_token_from_a_secret() -> None:
    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).parents[1] / "servers/k8s/load-workers.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    service = next(d for d in docs if d["kind"] == "Service")
    assert job["spec"]["parallelism"] == job["spec"]["completions"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "harness.cli worker --master" in container["args"][0]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env[TOKEN_ENV]["valueFrom"]
    host, port = env["TOKENBENCH_MASTER"]["value"].split(":")
    assert (host, int(port)) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert container["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("master", ["nope", "host:0", "host:70000", ":5557"])
def test_tokenbench_worker_rejects_a_bad_master_address(master: str) -> None:
    from cli_runner import tokenbench

    proc = tokenbench("worker", "--master", master, timeout=60)
    assert proc.returncode == 2
    assert (
        f"--master: expected HOST:PORT with a port in 1..65535, got '{master}'" in proc.stdout + proc.stderr
    )
