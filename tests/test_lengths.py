"""The achieved-output-length flag: which cells it picks, and that every report view shows it."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from harness.lengths import apply_length_flags, cell_output_mean, length_flags
from harness.report.data import load_run
from harness.report.html import render_html
from harness.report.markdown import render_markdown
from harness.report.terminal import print_summary
from harness.results import CellResult, RunSummary, StepMetrics
from synthetic_run import make_run


def cell(cell_id: str, *means: tuple[float, int]) -> CellResult:
    steps = [
        StepMetrics(
            step_id=f"c{i}",
            kind="concurrency",
            target=i + 1,
            duration_s=1.0,
            requests_total=n,
            requests_ok=n,
            requests_warmup=0,
            output_tokens_mean=mean,
            requested_output_tokens_mean=100.0,
        )  # fmt: skip
        for i, (mean, n) in enumerate(means)
    ]
    return CellResult(cell_id=cell_id, server="s", backend="tgi", model="m", identity="x", steps=steps)


def test_cell_mean_is_pooled_over_steps() -> None:
    assert cell_output_mean(cell("a", (100.0, 10), (50.0, 30))) == 62.5
    assert cell_output_mean(cell("a")) is None


def test_one_short_cell_among_equal_ones_is_the_only_one_flagged() -> None:
    cells = [cell("a", (100.0, 10)), cell("b", (99.0, 10)), cell("c", (101.0, 10)), cell("tgi", (80.0, 10))]
    flags = length_flags(cells)
    assert set(flags) == {"tgi"}
    assert flags["tgi"].startswith(
        "mean output 80.0 tokens is 19.6% below the median of all cells' means (99.5)"
    )
    # three cells, one off: only that one
    assert set(length_flags([cell("a", (100.0, 1)), cell("b", (100.0, 1)), cell("c", (50.0, 1))])) == {"c"}
    # two groups more than 5 % apart: all of them
    two = [cell("a", (100.0, 1)), cell("b", (100.0, 1)), cell("c", (80.0, 1)), cell("d", (80.0, 1))]
    assert set(length_flags(two)) == {"a", "b", "c", "d"}


def test_within_five_percent_is_not_flagged_and_two_cells_flag_each_other() -> None:
    assert length_flags([cell("a", (100.0, 5)), cell("b", (95.5, 5))]) == {}
    flags = length_flags([cell("a", (100.0, 5)), cell("b", (94.0, 5))])
    assert set(flags) == {"a", "b"} and "above the other cell's mean (94.0)" in flags["a"]
    assert "6.0% below the other cell's mean (100.0)" in flags["b"]
    assert length_flags([cell("only", (10.0, 5))]) == {}


def test_apply_sets_summary_fields() -> None:
    summary = RunSummary(run_id="r", scenario="s", started_at="t", harness_version="v")
    summary.cells = [cell("a", (100.0, 10)), cell("b", (100.0, 10)), cell("c", (50.0, 10))]
    apply_length_flags(summary)
    assert [c.output_tokens_mean for c in summary.cells] == [100.0, 100.0, 50.0]
    assert (
        summary.cells[0].output_length_flag is None and "50.0% below" in summary.cells[2].output_length_flag
    )


def test_every_report_view_shows_achieved_lengths_and_the_flag(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    data = json.loads((run_dir / "summary.json").read_text())
    short = data["cells"][1]["cell_id"]
    for step in data["cells"][1]["steps"]:
        step["output_tokens_mean"] *= 0.8
    (run_dir / "summary.json").write_text(json.dumps(data))
    run = load_run(run_dir)
    html = render_html(run)
    assert 'id="output_length_banner"' in html and short in html.split('id="output_length_banner"')[1][:800]
    assert html.count("data-output-mean") == len(data["cells"])
    assert '<td data-col="out_tok_req"' in html
    md = render_markdown(run)
    assert "**Output lengths differ**" in md and f"`{short}`" in md and "out tok/req" in md
    console = Console(record=True, width=250)
    print_summary(run, console)
    text = console.export_text()
    assert "output length:" in text and short in text and "out tok/req" in text


def test_an_unflagged_run_says_nothing(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path))
    assert 'id="output_length_banner"' not in render_html(run)
    assert "Output lengths differ" not in render_markdown(run)
