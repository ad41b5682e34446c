"""The report's drawing rules: readable labels, steps not ramps, one legend order, one notion of "highest load".

Each test reproduces one of the drawing bugs reported in issue 10 (§2) on
synthetic data and checks the rendered matplotlib artists, not pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Annotation

from harness.report import load_run
from harness.report.columns import Row, rows_of
from harness.report.figures import latency_vs_load, ordered, top_steps
from harness.report.frontier import place_labels
from harness.report.svg import cell_colors, new_figure, styled
from harness.report.timelines import lines, with_gaps
from harness.telemetry.config import TelemetryConfig, scrape_interval
from synthetic_run import SyntheticOptions, make_run


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    run = load_run(make_run(tmp_path_factory.mktemp("draw"), SyntheticOptions(concurrencies=(8,))))
    return rows_of(run.summary.cells, set())


def _as(row: Row, step_id: str, kind: str, target: float) -> Row:
    step = row.step.model_copy(update={"step_id": step_id, "kind": kind, "target": target})
    return Row(cell=row.cell, step=step, simulated=False)


def test_highest_load_is_the_highest_concurrency_not_the_last_rate(rows: list[Row]) -> None:
    a, b = rows
    mixed = [_as(a, "c2", "concurrency", 2), _as(a, "c8", "concurrency", 8), _as(a, "r4", "rate", 4)]
    rate_only = [_as(b, "r2", "rate", 2), _as(b, "r4", "rate", 4)]
    tops = top_steps(mixed + rate_only)
    assert tops[a.cell.cell_id].step.step_id == "c8"
    assert tops[b.cell.cell_id].step.step_id == "r4"  # no closed-loop step: its highest rate


def _boxes(fig, ax) -> list:  # noqa: ANN001 - matplotlib objects
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    return [t.get_window_extent(renderer) for t in ax.texts if isinstance(t, Annotation)]


def test_frontier_labels_never_overprint_or_leave_the_axes() -> None:
    # two cells whose c16 steps land on (almost) the same point: the old labels read "c16c16"
    points = [(100.0, 300.0), (101.0, 301.0), (100.5, 299.0), (400.0, 390.0), (20.0, 50.0)]
    labels = ["c16", "c16", "c16", "c32", "c1"]
    with styled():
        fig = new_figure(4.0, 3.0)
        ax = fig.subplots()
        ax.plot(*zip(*points, strict=True), "o")
        ax.set_xlim(0, 420)
        ax.set_ylim(0, 400)
        fig.draw_without_rendering()
        done = place_labels(ax, points, labels)
        boxes = _boxes(fig, ax)
        frame = ax.get_window_extent()
    assert len(boxes) == len(done) >= 3 and 3 in done and 4 in done  # the isolated points are labelled
    for i, one in enumerate(boxes):
        assert (
            frame.x0 - 1 <= one.x0
            and one.x1 <= frame.x1 + 1
            and frame.y0 - 1 <= one.y0
            and one.y1 <= frame.y1 + 1
        )
        for other in boxes[i + 1 :]:
            assert not one.overlaps(other), (one, other)


def test_a_single_load_level_is_drawn_as_bars_with_values(rows: list[Row]) -> None:
    colors = cell_colors([r.cell.cell_id for r in rows])
    fig = latency_vs_load(rows, "ttft", "TTFT", colors, set())
    assert fig.svg.count('id="ttft_vs_load-patch_') >= 4  # p50 and p99 bar per cell (plus axes/legend)
    for row in rows:
        p99 = row.step.ttft_ms.p99
        assert f"p99 {p99:,.0f}" in fig.svg or f"p99 {p99:.1f}" in fig.svg
    assert "one load level: 8 users" in fig.svg and "hatched" in fig.caption


def test_sparse_samples_are_held_steps_and_gaps_stay_empty() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0, 30.0, 31.0, 32.0])
    v = np.array([1, 2, 3, 4, 5, 6, 7], dtype=float)
    gt, gv = with_gaps(t, v)
    assert len(gt) == len(t) + 1 and np.isnan(gv[4]) and 3.0 < gt[4] < 30.0
    data = pd.DataFrame({"cell_id": ["a"] * len(t), "t_s": t, "value": v})
    with styled():
        ax = new_figure().subplots()
        lines(ax, data, {"a": "#123456"})
    drawn = [ln for ln in ax.get_lines() if ln.get_linestyle() != "None"]
    assert drawn and all(ln.get_drawstyle() == "steps-post" for ln in drawn)
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert dots and len(dots[0].get_xdata()) == len(gt)


def test_legends_list_cells_in_run_order_whatever_order_they_were_drawn() -> None:
    colors = cell_colors(["a", "b", "c"])
    assert ordered(["c", "a", "b", "a"], colors) == ["a", "b", "c"]
    assert ordered(["z", "b"], colors) == ["b", "z"]


def test_scrape_interval_gives_each_step_at_least_n_samples() -> None:
    assert scrape_interval([None], 4) == 1.0  # request-bounded steps: unknown length, 1 s default
    assert scrape_interval([30.0], 4) == 1.0
    assert scrape_interval([2.0], 4) == pytest.approx(0.4)
    assert scrape_interval([2.0], 9) == pytest.approx(0.2)
    assert scrape_interval([0.1], 4) == 0.1  # floor: a scrape renders every metric of the server
    for seconds in (1.0, 2.0, 5.0, 12.0, 60.0):
        interval = scrape_interval([seconds], 4)
        # worst case phase: the first scrape lands a whole interval after the step starts
        assert int((seconds - interval) // interval) + 1 >= 4
    assert TelemetryConfig().prometheus_samples_per_step == 4
    with pytest.raises(ValueError):
        TelemetryConfig(prometheus_samples_per_step=0)


def test_report_html_wraps_limited_reasons(tmp_path: Path) -> None:
    from harness.report import render_html

    html = render_html(load_run(make_run(tmp_path, SyntheticOptions())))
    assert '<td class="l reasons">' in html and "td.reasons { white-space: normal;" in html
