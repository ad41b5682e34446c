"""The report for servers of several process trees and for steps over a server's concurrency cap."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from rich.console import Console

from harness.report.data import cap_notes, load_run
from harness.report.html import write_report
from harness.report.memory import memory_timeline, role_series
from harness.report.terminal import print_summary
from synthetic_run import make_run


def _two_tree_run(tmp_path: Path) -> Path:
    """A synthetic run whose first cell is a Caikit-like server (tgis + caikit trees), capped at 5."""
    run_dir = make_run(tmp_path)
    ts = pd.read_parquet(run_dir / "timeseries.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    first = summary["cells"][0]["cell_id"]
    rss = ts[(ts["cell_id"] == first) & (ts["name"] == "rss_bytes")]
    tgis = rss.assign(labels="role=tgis", value=rss["value"] * 0.8)
    caikit = rss.assign(labels="role=caikit", value=rss["value"] * 0.2)
    ts = pd.concat([ts.drop(rss.index), tgis, caikit], ignore_index=True)
    ts.to_parquet(run_dir / "timeseries.parquet", index=False)
    cell = summary["cells"][0]
    cell["concurrency_cap"], cell["concurrency_cap_setting"] = 5, "RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE"
    for step in cell["steps"]:
        step["exceeds_concurrency_cap"] = step["kind"] == "concurrency" and step["target"] > 5
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_memory_panel_draws_each_process_tree(tmp_path: Path) -> None:
    run = load_run(_two_tree_run(tmp_path))
    roles = role_series(run)
    assert sorted(roles) == ["caikit", "tgis"]
    assert set(roles["tgis"]["cell_id"]) == {run.summary.cells[0].cell_id}  # single-tree cells left out
    figure = memory_timeline(run, {})
    assert "each tree on its own" in figure.caption and "tgis" in figure.caption
    assert "process tree: caikit" in figure.svg


def test_steps_over_the_cap_are_said_in_report_and_terminal(tmp_path: Path) -> None:
    run_dir = _two_tree_run(tmp_path)
    run = load_run(run_dir)
    (note,) = cap_notes(run)
    assert "c16" in note and "cap of 5" in note and "RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE" in note
    html = write_report(run_dir).read_text()
    assert 'id="concurrency_cap_banner"' in html and "RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE" in html
    out = io.StringIO()
    print_summary(run, Console(file=out, width=200))
    text = out.getvalue()
    assert "over cap 5" in text and "concurrency cap:" in text


def test_a_run_without_caps_or_trees_says_nothing_of_them(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    run = load_run(run_dir)
    assert cap_notes(run) == [] and role_series(run) == {}
    assert "concurrency_cap_banner" not in write_report(run_dir).read_text()
