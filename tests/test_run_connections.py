"""``workload.connections`` through the whole pipeline: summary.json, report.html, summary.md, terminal.

One ``tokenbench run`` per mode against the simulator (32 closed-loop users and
an open-loop step): with ``prewarm`` no measured request opens a connection,
with ``cold`` each user's first one does; either way every report carries the
per-step harness-health figures (loop lag, client CPU, coalesced chunks,
connections and connect times). Identities: tests/test_matrix.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_run_sim import run_cli, scenario, wait_gone

from leftovers import new_marker

USERS = 32


def _run(tmp_path: Path, **workload: Any) -> tuple[Path, str, dict[str, Any]]:
    servers = [{"name": "sim", "backend": "sim", "model": "m", "settings": {"ttft_ms": 20, "itl_ms": 2}}]
    steps = {"concurrency": [USERS], "rate": [20]}
    path = scenario(tmp_path, servers, steps=steps, requests=64, max_concurrency=8, **workload)
    marker = new_marker()
    proc = run_cli(path, tmp_path / "reports", marker)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert wait_gone(marker[1]) == []
    run_dir = next((tmp_path / "reports").glob("*-sim-e2e"))
    return run_dir, out, json.loads((run_dir / "summary.json").read_text())


def _harness(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (cell,) = summary["cells"]
    return {s["step_id"]: s["harness"] for s in cell["steps"]}


def _reports_carry_health(run_dir: Path, out: str, connects: int) -> None:
    html = (run_dir / "report.html").read_text()
    section = html[html.index('id="harness_health"') :]
    for label in (
        "loop lag p99 / max (ms)",
        "client CPU",
        "coalesced chunks",
        "connects in window",
        "connect p50 / p99 / max (ms)",
    ):
        assert label in section, label
    md = (run_dir / "summary.md").read_text()
    assert "**Harness health**" in md and f"connects in window {connects}," in md
    assert "harness health" in out  # the terminal's table (its column labels wrap at 80 columns)


def test_prewarm_is_the_default_and_leaves_no_connect_in_the_window(tmp_path: Path) -> None:
    run_dir, out, summary = _run(tmp_path)
    health = _harness(summary)
    assert set(health) == {f"c{USERS}", "r20"}
    for step_id, h in health.items():
        assert h["connections"] == "prewarm", step_id
        assert h["connects"] == 0, step_id
        assert h["prewarm_failures"] == 0 and h["prewarm_s"] is not None, step_id
        assert h["connect_p99_ms"] is None  # no request connected, so no connect time to report
        assert isinstance(h["loop_lag_p99_ms"], float) and isinstance(h["client_cpu_pct"], float)
    step_health = json.loads(next(run_dir.rglob(f"c{USERS}/health.json")).read_text())
    assert step_health["prewarm_users"] == USERS
    _reports_carry_health(run_dir, out, 0)


def test_cold_connects_once_per_user(tmp_path: Path) -> None:
    run_dir, out, summary = _run(tmp_path, connections="cold")
    h = _harness(summary)[f"c{USERS}"]
    assert h["connections"] == "cold"
    assert h["connects"] == USERS  # requests mode, no warm-up: every user's first request is measured
    assert 0 < h["connect_p50_ms"] <= h["connect_p99_ms"] <= h["connect_max_ms"]
    assert h["prewarm_s"] is None
    _reports_carry_health(run_dir, out, USERS)
