"""Markdown summary, terminal table, and run-folder loading."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness.report import ReportError, load_run, print_summary, render_markdown
from harness.report.data import per_request, run_origin_ns
from synthetic_run import SyntheticOptions, make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("text"), SyntheticOptions(failed_cell=True))


def _table_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def test_markdown_has_one_row_per_cell_and_step(run_dir: Path) -> None:
    run = load_run(run_dir)
    md = render_markdown(run)
    rows = _table_rows(md)
    expected = [(c.cell_id, s.step_id) for c in run.summary.cells for s in c.steps]
    assert len(rows) == len(expected) == 6
    assert [r[0] for r in rows] == [cid for cid, _ in expected]
    header = next(ln for ln in md.splitlines() if ln.startswith("| cell"))
    assert all(len(r) == header.count("|") - 1 for r in rows)


def test_markdown_bolds_best_and_lists_failures(run_dir: Path) -> None:
    md = render_markdown(load_run(run_dir))
    rows = _table_rows(md)
    by_load: dict[str, list[str]] = {}
    for r in rows:  # "best" is judged within one load level: one bold TTFT p50 per level
        by_load.setdefault(r[1], []).append(r[3])
    assert len(by_load) == 3
    for values in by_load.values():
        assert sum(v.startswith("**") for v in values) == 1
        best = min(values, key=lambda v: float(v.strip("*").replace(",", "")))
        assert best.startswith("**")
    assert "`vllm-c__max_num_seqs-64`: server exited with code 1" in md
    assert "⚠ limited" in md and "INCOMPLETE" not in md


def test_markdown_marks_incomplete_and_simulated(tmp_path: Path) -> None:
    md = render_markdown(load_run(make_run(tmp_path, SyntheticOptions(complete=False, simulated=True))))
    assert "**INCOMPLETE RUN**" in md and "**SIMULATED**" in md
    assert all("(SIMULATED)" in r[0] for r in _table_rows(md))


def test_terminal_summary_lists_cells_failures_and_path(run_dir: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=220, color_system=None)
    print_summary(load_run(run_dir), console)
    out = buf.getvalue()
    summary, health = out.split("harness health", 1)  # the summary table, then every step's self-diagnosis
    assert summary.count("vllm-a__max_num_seqs-8") == 3 and "vllm-b__max_num_seqs-32" in summary
    assert health.count("vllm-a__max_num_seqs-8") == 3 and "vllm-b__max_num_seqs-32" in health
    for label in ("loop lag p99", "client CPU", "coalesced", "connections", "connects in window"):
        assert label in health
    for label in ("TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "output tok/s", "req/s", "errors"):
        assert label in out
    assert "failed: vllm-c__max_num_seqs-64" in out
    assert f"report: {run_dir / 'report.html'}" in out


def test_load_run_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such run folder"):
        load_run(tmp_path / "nope")


def test_load_run_without_summary_is_incomplete(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    (run_dir / "summary.json").unlink()
    run = load_run(run_dir)
    assert run.incomplete and any("summary.json is missing" in p for p in run.problems)
    assert run.summary.cells == [] and set(run.cell_ids) == set(run.records["cell_id"])


def test_load_run_rejects_bad_env_json(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    (run_dir / "env.json").write_text("{not json")
    with pytest.raises(ReportError, match="env.json: not valid JSON"):
        load_run(run_dir)


def test_per_request_latencies_from_scheduled_time(run_dir: Path) -> None:
    run = load_run(run_dir)
    frame = per_request(run.records)
    measured = run.records[~run.records["warmup"] & run.records["error_class"].isna()]
    assert len(frame) == len(measured)
    expected = (measured["first_token_ns"] - measured["scheduled_ns"]).to_numpy(dtype=float) / 1e6
    assert np.allclose(np.sort(frame["ttft_ms"].to_numpy(dtype=float)), np.sort(expected))
    assert run_origin_ns(run) == min(
        int(run.records["scheduled_ns"].min()), int(run.timeseries["t_ns"].min())
    )
