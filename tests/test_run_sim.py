"""The whole pipeline against the simulator: fast, exact, and able to fail on purpose.

Covers what the real-vLLM test cannot afford to: a cell whose server fails to
start (the run goes on and exits non-zero naming it), Ctrl-C in the middle of
a run (finished steps kept, run marked incomplete, nothing left running), and
an open-loop step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from leftovers import new_marker, processes_with_marker

REPO = Path(__file__).resolve().parents[1]


def scenario(tmp: Path, servers: list[dict], **workload: object) -> Path:
    data = {
        "name": "sim-e2e",
        "seed": 1,
        "servers": servers,
        "workload": {
            "api": "completions",
            "prompt_tokens": 8,
            "output_tokens": 10,
            "steps": {"concurrency": [2], "rate": [20]},
            "requests": 12,
            "timeout_s": 20,
            **workload,
        },
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(path: Path, out: Path, marker: tuple[str, str], **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, marker[0]: marker[1]}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


def wait_gone(marker: str, timeout: float = 10.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_sim_run_with_a_failing_cell(tmp_path: Path) -> None:
    servers = [
        {
            "name": "fast",
            "backend": "sim",
            "model": "sim-model",
            "settings": {"ttft_ms": [20, 40], "itl_ms": 5},
        },
        # a vLLM whose interpreter does not exist: must fail to start, be reported, and not stop the run
        {
            "name": "broken",
            "backend": "vllm",
            "model": "nothing",
            "python": "/nonexistent/python",
            "startup_timeout_s": 5,
        },
    ]
    marker = new_marker()
    proc = run_cli(scenario(tmp_path, servers), tmp_path / "reports", marker)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "broken" in out and "failed cells" in out
    run_dir = next((tmp_path / "reports").glob("*-sim-e2e"))
    summary = json.loads((run_dir / "summary.json").read_text())
    status = {c["cell_id"]: c["status"] for c in summary["cells"]}
    assert status == {"fast__ttft_ms-20": "ok", "fast__ttft_ms-40": "ok", "broken": "failed"}
    broken = summary["cells"][2]
    assert broken["error"]
    # stream_options: decided once per cell (auto: the sim accepts them) and recorded with the reason
    fast = summary["cells"][0]
    assert (fast["protocol"], fast["stream_usage"]) == ("completions", True)
    assert "accepted" in fast["stream_usage_reason"]
    plan = json.loads(next(run_dir.rglob("load_plan.json")).read_text())
    assert plan["stream_usage"] is True and plan["tls_insecure_skip_verify"] is False
    df = pq.read_table(run_dir / "records.parquet").to_pandas()
    assert len(df) == 2 * 2 * 12
    # every stream was read and stamped by the native reader thread and seen to its end by it
    healths = list(run_dir.rglob("health.json"))
    assert len(healths) == 2 * 2  # one per step of each sim cell
    for health_path in healths:
        for worker in json.loads(health_path.read_text())["workers"]:
            assert worker["reader"].startswith("native (reader thread "), worker
            assert worker["reader_responses"]["replayed"] == 0
            assert worker["reader_responses"]["whole"] >= worker["requests"] > 0
            assert worker["reader_cpu_s"] >= 0
            # Linux gives reads their kernel receive stamp; a process's first reads may precede the
            # kernel's switching its timestamping on (it does that once, deferred), so not all of them
            stamps = worker["reader_stamps"]
            assert (
                stamps["reads"] >= worker["requests"] and stamps["thread_stamped"] * 10 <= stamps["reads"]
            ), stamps
    assert df["simulated"].all()
    assert (df["output_tokens"] == 10).all()
    ttft = (df["first_token_ns"] - df["scheduled_ns"]) / 1e6
    fast20 = ttft[(df["cell_id"] == "fast__ttft_ms-20") & (df["step_id"] == "c2")]
    fast40 = ttft[(df["cell_id"] == "fast__ttft_ms-40") & (df["step_id"] == "c2")]
    assert fast20.median() < fast40.median()
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert "SIMULATED" in (run_dir / "report.html").read_text()
    assert wait_gone(marker[1]) == []


def test_ctrl_c_keeps_finished_steps_and_stops_everything(tmp_path: Path) -> None:
    servers = [{"name": "slow", "backend": "sim", "model": "m", "settings": {"ttft_ms": 10, "itl_ms": 5}}]
    path = scenario(tmp_path, servers, steps={"concurrency": [2, 2, 2, 2]}, requests=None, duration_s=4)
    data = yaml.safe_load(path.read_text())
    data["workload"]["steps"] = {"concurrency": [1, 2], "rate": [5, 10]}
    path.write_text(yaml.safe_dump(data))
    marker = new_marker()
    proc = run_cli(path, tmp_path / "reports", marker)
    run_dir = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first step is measured and summarised
        runs = list((tmp_path / "reports").glob("*-sim-e2e"))
        if runs and (runs[0] / "summary.json").exists():
            cells = json.loads((runs[0] / "summary.json").read_text())["cells"]
            if cells[0]["steps"]:
                run_dir = runs[0]
                break
        time.sleep(0.2)
    assert run_dir is not None
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] and not summary["complete"]
    steps = summary["cells"][0]["steps"]
    assert steps and steps[0]["step_id"] == "c1"
    assert pq.read_table(run_dir / "records.parquet").num_rows >= steps[0]["requests_total"]
    assert (run_dir / "report.html").exists()
    assert wait_gone(marker[1]) == []
