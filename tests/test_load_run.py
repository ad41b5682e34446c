"""Real Locust runs through ``run_step`` against the simulator (closed/open loop, workers, faults, Ctrl-C).

These spawn Locust subprocesses, so each takes a few seconds; they assert
counts, ordering, flags and classifications, never speed.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.backends.process import free_port
from harness.load.plan import PLAN_ENV, LoadPlan
from harness.load.runner import LoadRunError, run_step
from harness.records import read_records
from load_plans import sim_plan

REPO = Path(__file__).resolve().parent.parent
SECRET = "Bearer tb-secret-7f3a9"


def _plan(tmp_path: Path, base_url: str, **kw: Any) -> LoadPlan:
    kw.setdefault("warmup_s", 0.5)
    kw.setdefault("duration_s", 2.5)
    return sim_plan(tmp_path, base_url=base_url, **kw)


def _rows(path: Path) -> list[dict[str, Any]]:
    return read_records(path).to_pylist()


def _check_common(rows: list[dict[str, Any]], plan: LoadPlan) -> None:
    assert rows, "no records"
    assert len({r["request_id"] for r in rows}) == len(rows)
    for r in rows:
        assert (r["run_id"], r["cell_id"], r["step_id"], r["api"]) == (
            plan.run_id,
            plan.cell_id,
            plan.step_id,
            plan.api,
        )
        assert r["simulated"] is True
        assert r["error_class"] is None, r["error_message"]
        assert r["scheduled_ns"] <= r["sent_ns"] < r["first_token_ns"] <= r["end_ns"]
        assert r["chunk_times_ns"] == sorted(r["chunk_times_ns"])
        assert r["first_token_ns"] == r["chunk_times_ns"][0]
        assert len(r["chunk_tokens"]) == len(r["chunk_times_ns"])
        assert sum(r["chunk_tokens"]) == r["output_tokens"] == r["requested_output_tokens"]
        assert r["token_source"] == "usage"
        assert r["client_output_tokens"] == r["output_tokens"]
    # Warm-up is decided by the *scheduled* time, per worker, from that worker's first request.
    for worker in {r["worker"] for r in rows}:
        mine = [r for r in rows if r["worker"] == worker]
        t0 = min(r["scheduled_ns"] for r in mine)
        edge = t0 + plan.warmup_s * 1e9
        for r in mine:
            if abs(r["scheduled_ns"] - edge) > 5e6:  # t0 is stamped a hair before the first send
                assert r["warmup"] == (r["scheduled_ns"] < edge)
        assert any(r["warmup"] for r in mine) and any(not r["warmup"] for r in mine)


def test_closed_loop_records_match_the_server(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=50, itl_ms=5, tokens_per_chunk=2)
    plan = _plan(tmp_path, sim.base_url)
    out = run_step(plan, tmp_path / "step", headers={"Authorization": SECRET})
    rows = _rows(out.records_path)
    _check_common(rows, plan)
    assert all(r["scheduled_ns"] == r["sent_ns"] for r in rows)  # closed loop: no schedule to lag behind
    assert {r["worker"] for r in rows} == {0}
    assert len(rows) >= 12  # 4 users x 3 s of ~0.1 s requests; loose so a loaded box cannot fail it
    assert all(len(r["chunk_times_ns"]) < r["output_tokens"] for r in rows)  # several tokens per chunk
    # No more than 4 requests in flight at any moment (closed loop, 4 users).
    edges = sorted([(r["sent_ns"], 1) for r in rows] + [(r["end_ns"], -1) for r in rows])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak <= 4
    sim.stop()
    truth = sim.truth()
    assert sum(len(t.chunk_times_ns) for t in truth.values()) == sum(len(r["chunk_times_ns"]) for r in rows)
    assert len(truth) == len(rows)
    # health is written and well-formed
    for key in ("loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms", "client_cpu_s", "client_cpu_pct"):
        assert isinstance(out.health[key], float)
    assert out.health["cancelled"] == 0
    assert [w["index"] for w in out.health["workers"]] == [0]
    assert out.health["workers"][0]["requests"] == len(rows)
    assert isinstance(out.health["limited"], bool) and isinstance(out.health["reasons"], list)
    # the secret never reaches a file
    for path in [*(tmp_path / "step").iterdir(), out.records_path, Path(plan.health_path)]:
        assert SECRET.encode() not in path.read_bytes(), path


def test_open_loop_two_workers_chat(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=30, itl_ms=5)
    plan = _plan(tmp_path, sim.base_url, api="chat", kind="rate", target=20.0, processes=2, output_tokens=8)
    out = run_step(plan, tmp_path / "step")
    rows = _rows(out.records_path)
    _check_common(rows, plan)
    assert {r["worker"] for r in rows} == {0, 1}
    assert 20 <= len(rows) <= 120  # 60 expected from a Poisson process of 20/s over 3 s
    assert sorted(w["index"] for w in out.health["workers"]) == [0, 1]
    for worker in (0, 1):
        sched = [r["scheduled_ns"] for r in rows if r["worker"] == worker]
        assert len(set(sched)) == len(sched)  # every arrival is its own request


def test_request_count_mode_is_exact_across_workers(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=10, itl_ms=2)
    plan = _plan(tmp_path, sim.base_url, target=4, processes=2, duration_s=None, requests=11, warmup_s=0.0)
    out = run_step(plan, tmp_path / "step")
    rows = _rows(out.records_path)
    assert len(rows) == 11
    assert not any(r["warmup"] for r in rows)
    assert sorted([sum(r["worker"] == w for r in rows) for w in (0, 1)]) == [5, 6]


def test_faults_are_classified_and_the_run_goes_on(tmp_path: Path, sim_server: Any) -> None:
    schedule = (
        "http_500@1,reset_before_headers@2,disconnect_mid_stream@3,malformed_sse@4,http_429@5,stall:4@6"
    )
    sim = sim_server(ttft_ms=10, itl_ms=2, fault_schedule=schedule)
    plan = _plan(tmp_path, sim.base_url, target=1, duration_s=None, requests=7, warmup_s=0.0, timeout_s=1.5)
    out = run_step(plan, tmp_path / "step")
    rows = sorted(_rows(out.records_path), key=lambda r: r["scheduled_ns"])
    classes = [r["error_class"] for r in rows]
    assert classes == ["http_5xx", "connect", "stream_broken", "bad_payload", "http_4xx", "timeout", None]
    assert rows[0]["status"] == 500 and rows[0]["error_message"].startswith("HTTP 500")
    assert rows[4]["status"] == 429
    assert len(rows[2]["chunk_times_ns"]) >= 1  # a broken stream keeps what it received


def test_connection_refused_is_a_connect_error(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, f"http://127.0.0.1:{free_port()}", target=2, duration_s=None, requests=3, warmup_s=0.0
    )
    out = run_step(plan, tmp_path / "step")
    rows = _rows(out.records_path)
    assert [r["error_class"] for r in rows] == ["connect"] * 3
    assert all(r["status"] == 0 and r["first_token_ns"] is None for r in rows)


def test_missing_records_raise_with_the_log_tail(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "http://127.0.0.1:9", duration_s=1.0)
    Path(plan.prompts_path).write_text("not json\n")
    with pytest.raises(LoadRunError, match="wrote no records"):
        run_step(plan, tmp_path / "step")


def _locust_of(plan_path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(PLAN_ENV) == str(plan_path):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_keeps_partial_records_and_kills_locust(
    tmp_path: Path, sim_server: Any, processes: int
) -> None:
    sim = sim_server(ttft_ms=20, itl_ms=20)
    plan = _plan(tmp_path, sim.base_url, duration_s=60.0, warmup_s=0.0, processes=processes, target=2)
    plan_file = tmp_path / "plan.json"
    plan.write(plan_file)
    script = tmp_path / "drive.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import signal, sys
            from pathlib import Path
            signal.signal(signal.SIGINT, signal.default_int_handler)
            from harness.load.plan import LoadPlan
            from harness.load.runner import run_step
            try:
                run_step(LoadPlan.read({str(plan_file)!r}), Path({str(tmp_path / "step")!r}))
            except KeyboardInterrupt:
                sys.exit(42)
            sys.exit(0)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, start_new_session=True)
    try:
        step_plan = tmp_path / "step" / "load_plan.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and driver.poll() is None:
            if sim.write_log_path.exists() and sim.truth():
                break
            time.sleep(0.2)
        time.sleep(1.5)  # let some requests complete
        os.kill(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=30) == 42
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    rows = _rows(Path(plan.records_path))
    assert rows and all(r["error_class"] is None for r in rows)
    assert not _locust_of(step_plan)
    if processes == 2:
        import json

        health = json.loads(Path(plan.health_path).read_text())
        assert sorted(w["index"] for w in health["workers"]) == [0, 1]


def test_open_loop_queueing_shows_up_instead_of_vanishing(tmp_path: Path, sim_server: Any) -> None:
    """One user against 20 req/s of ~0.15 s requests: arrivals wait, and the wait is in the records."""
    sim = sim_server(ttft_ms=100, itl_ms=5)
    plan = _plan(
        tmp_path,
        sim.base_url,
        kind="rate",
        target=20.0,
        max_concurrency=1,
        output_tokens=8,
        warmup_s=0.0,
        duration_s=2.0,
    )
    out = run_step(plan, tmp_path / "step")
    rows = sorted(_rows(out.records_path), key=lambda r: r["scheduled_ns"])
    assert rows and all(r["error_class"] is None for r in rows)
    queued = [(r["sent_ns"] - r["scheduled_ns"]) / 1e6 for r in rows]
    assert max(queued) > 100  # late arrivals waited for the single user...
    assert all(r["first_token_ns"] - r["scheduled_ns"] >= r["first_token_ns"] - r["sent_ns"] for r in rows)
    edges = sorted([(r["sent_ns"], 1) for r in rows] + [(r["end_ns"], -1) for r in rows])
    assert max(itertools.accumulate(step for _, step in edges)) == 1  # ...because only one was ever in flight
    assert out.health["unsent"] > 0
    assert any("never sent" in reason for reason in out.health["reasons"])


def test_locust_master_listens_on_loopback_only(tmp_path: Path) -> None:
    """Locust's master channel is unauthenticated: with --processes it must not bind every interface."""
    from harness.load.runner import locust_command

    plan = _plan(tmp_path, "http://127.0.0.1:9", processes=2)
    cmd = locust_command(plan, master_port=5557)
    assert cmd[cmd.index("--master-bind-host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--master-host") + 1] == "127.0.0.1"
    assert "--master-bind-host" not in locust_command(_plan(tmp_path, "http://127.0.0.1:9"))
