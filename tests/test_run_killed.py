"""A harness that is SIGKILLed leaves nothing running, its run reads as interrupted, and it resumes.

SIGKILL runs no handler, no ``finally`` and no ``atexit``: what is tested here
is the supervisor every child runs under (``harness/backends/supervise.py``),
the owner marker in ``summary.json``, and ``tokenbench run --resume``. The
same path against a real vLLM server (whose EngineCore is a grandchild) is in
``test_run_vllm.py``.
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
import pytest
import yaml

from cli_runner import tokenbench
from harness.backends.leftovers import stop_leftovers
from harness.backends.process import ManagedProcess, group_members
from harness.owner import OWNER_ENV
from harness.rundir import RunDir
from leftovers import new_marker, processes_with_marker

REPO = Path(__file__).resolve().parents[1]


def _scenario(tmp: Path) -> Path:
    data = {
        "name": "killed",
        "seed": 3,
        "servers": [
            {"name": "a", "backend": "sim", "model": "m", "settings": {"ttft_ms": 10, "itl_ms": 2}},
            {"name": "b", "backend": "sim", "model": "m", "settings": {"ttft_ms": 5, "itl_ms": 2}},
        ],
        "workload": {
            "prompt_tokens": 8,
            "output_tokens": 8,
            "steps": {"concurrency": [1, 2, 4]},
            "duration_s": 2,
            "timeout_s": 10,
        },
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait_for_first_step(reports: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in reports.glob("*-killed"):
            summary = run / "summary.json"
            if summary.exists():
                cells = json.loads(summary.read_text())["cells"]
                if cells[0]["steps"] and cells[0]["status"] == "running":
                    return run
        time.sleep(0.1)
    raise AssertionError("the first step never finished")


def _wait_gone(marker: str, timeout: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_sigkilled_run_leaves_no_process_reads_interrupted_and_resumes(tmp_path: Path) -> None:
    marker = new_marker()
    reports = tmp_path / "reports"
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(_scenario(tmp_path)), "--out", str(reports)],
        cwd=REPO,
        env={**os.environ, marker[0]: marker[1]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_dir = _wait_for_first_step(reports)
        time.sleep(0.5)  # into the second step: a simulator and a Locust run are up
        assert len(processes_with_marker(marker[1])) >= 3  # harness, sim, Locust
        harness.send_signal(signal.SIGKILL)
        harness.wait(timeout=10)
        killed_at = time.monotonic()
        left = _wait_gone(marker[1], timeout=5.0)
        assert left == [], f"still running {time.monotonic() - killed_at:.1f}s after SIGKILL: {left}"
    finally:
        harness.kill()
        harness.wait()

    stored = json.loads((run_dir / "summary.json").read_text())
    assert stored["cells"][0]["status"] == "running" and not stored["complete"]
    summary = RunDir(run_dir).read_summary()  # the reader sees the dead owner
    assert summary.interrupted and not summary.complete
    assert [c.status for c in summary.cells] == ["interrupted", "pending"]
    kept = {m.step_id for m in summary.cells[0].steps}
    assert "c1" in kept
    first = run_dir / "cells" / "a" / "steps" / "c1" / "records.parquet"
    before = first.read_bytes()

    done = tokenbench("run", "--resume", run_dir, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped a process" not in done.stdout  # the supervisor already took everything down
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["complete"] and final["resumes"] == 1
    assert [c["status"] for c in final["cells"]] == ["ok", "ok"]
    for cell in final["cells"]:
        assert [s["step_id"] for s in cell["steps"]] == ["c1", "c2", "c4"]
    assert first.read_bytes() == before  # the finished step was kept, not re-run
    assert sorted(p.name for p in reports.iterdir()) == [run_dir.name]  # one run folder, one report
    assert (run_dir / "report.html").exists()
    merged = pq.read_table(run_dir / "records.parquet").to_pandas()
    assert set(merged["cell_id"]) == {"a", "b"}


def test_resume_refuses_a_finished_run_and_a_missing_folder(tmp_path: Path) -> None:
    missing = tokenbench("run", "--resume", tmp_path / "nope")
    assert missing.returncode == 2 and "not a run folder" in missing.stdout
    path = _scenario(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["servers"] = data["servers"][:1]
    data["workload"].update(steps={"concurrency": [1]}, duration_s=None, requests=3)
    path.write_text(yaml.safe_dump(data))
    first = tokenbench("run", path, "--out", tmp_path / "r")
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = next((tmp_path / "r").iterdir())
    again = tokenbench("run", "--resume", run_dir)
    assert again.returncode == 2 and "nothing is left to run" in again.stdout


def test_supervised_child_reports_its_own_pid_and_exit_status(tmp_path: Path) -> None:
    proc = ManagedProcess(
        [sys.executable, "-c", "import os; print(os.getpid())"], log_path=tmp_path / "p.log"
    )
    assert proc.wait(timeout=20) == 0
    assert int((tmp_path / "p.log").read_text().split()[-1]) == proc.pid != proc.pgid
    failing = ManagedProcess(["bash", "-c", "exit 7"], log_path=tmp_path / "f.log")
    assert failing.wait(timeout=20) == 7
    signalled = ManagedProcess(["bash", "-c", "kill -ABRT $$"], log_path=tmp_path / "s.log")
    assert signalled.wait(timeout=20) == -signal.SIGABRT
    missing = ManagedProcess(["/nonexistent/binary"], log_path=tmp_path / "m.log")
    assert missing.wait(timeout=20) == 127
    assert "cannot start" in (tmp_path / "m.log").read_text()
    for p in (proc, failing, signalled, missing):
        p.terminate()


def test_stop_leftovers_stops_only_processes_of_dead_owners(tmp_path: Path) -> None:
    dead = subprocess.Popen(  # tagged by a harness that no longer exists (pid 1 never started at t=1)
        ["bash", "-c", "sleep 300 & wait"],
        env={**os.environ, OWNER_ENV: "1:1.00"},
        start_new_session=True,
    )
    ours = ManagedProcess(["sleep", "300"], log_path=tmp_path / "ours.log")
    try:
        deadline = time.monotonic() + 5
        while len(group_members(dead.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = stop_leftovers(grace_s=1.0)
        assert any(f"pid {dead.pid} " in line and "harness pid 1" in line for line in lines), lines
        assert dead.wait(timeout=10) is not None
        assert group_members(dead.pid) == []
        assert ours.poll() is None  # a live owner's (this test's) process is left alone
    finally:
        dead.kill()
        ours.terminate()


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_killed_owner_takes_grandchildren_down(tmp_path: Path, sig: int) -> None:
    """A plain process (no run) that owns a ManagedProcess with a grandchild tree, then dies by SIGKILL."""
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom harness.backends.process import ManagedProcess\n"
        "p = ManagedProcess(['bash', '-c', 'sleep 300 & sleep 300 & wait'], log_path=Path(sys.argv[1]))\n"
        "print(p.pgid, flush=True)\ntime.sleep(300)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "g.log")], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert owner.stdout is not None
        pgid = int(owner.stdout.readline())
        deadline = time.monotonic() + 5
        while len(group_members(pgid)) < 4 and time.monotonic() < deadline:  # supervisor, bash, 2 sleeps
            time.sleep(0.02)
        assert len(group_members(pgid)) == 4
        owner.send_signal(sig)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 5
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_members(pgid) == []
    finally:
        owner.kill()
        owner.wait()


def test_run_folder_is_absolute_even_for_a_relative_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers run in their own working directory (Caikit reads CONFIG_FILES from it): paths must be absolute."""
    monkeypatch.chdir(tmp_path)
    run_dir = RunDir.create(Path("reports"), "rel")
    assert run_dir.path.is_absolute() and run_dir.path.parent == tmp_path / "reports"
