"""The report's headline: best cell per load level, by how much, and whether it is beyond the gate's noise.

The numbers are checked against the summary the table prints, the noise
decision against the gate's own interval, and the "within one load level"
rule against a run whose cells ran different kinds of load.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import synthetic_run
from harness.gate.interval import change_interval
from harness.gate.measure import Measurer
from harness.gate.rundata import StepGroup
from harness.gate.samples import extract_samples
from harness.report import load_run, render_html, render_markdown
from harness.report.columns import Row, rows_of
from harness.report.headline import CONFIDENCE, METRICS, build_headline, capacity_lines, load_levels
from harness.report.summary_tables import headline_box
from harness.results import Capacity, CellResult
from synthetic_run import SyntheticOptions, make_run

A, B = "vllm-a__max_num_seqs-8", "vllm-b__max_num_seqs-32"


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 requests per step: enough for bounded p99 intervals; cell b is 1.35× slower by construction."""
    return make_run(tmp_path_factory.mktemp("many"), SyntheticOptions(requests_per_step=400))


def test_headline_numbers_match_the_summary(many: Path) -> None:
    run = load_run(many)
    rows = rows_of(run.summary.cells, run.simulated_cells)
    headline = build_headline(rows, run.records)
    assert [lv.label for lv in headline.levels] == ["1 user", "4 users", "16 users"]
    for level in headline.levels:
        mine = [r for r in rows if (r.step.kind, r.step.target) == (level.kind, level.target)]
        assert [v.metric.key for v in level.verdicts] == [m.key for m in METRICS]
        for v in level.verdicts:
            values = {r.cell.cell_id: v.metric.value(r) for r in mine}
            pick = min if v.metric.better == "min" else max
            assert v.best_cell == pick(values, key=lambda c: values[c])
            assert v.best_value == values[v.best_cell] and v.runner_value == values[v.runner_cell]
            assert v.runner_cell != v.best_cell
        ttft = next(v for v in level.verdicts if v.metric.key == "ttft_p99")
        step = {r.cell.cell_id: r.step for r in mine}
        assert ttft.best_value == step[ttft.best_cell].ttft_ms.p99
        ratio = step[ttft.runner_cell].ttft_ms.p99 / step[ttft.best_cell].ttft_ms.p99
        assert ttft.margin == (f"÷{ratio:.2f}" if ratio < 1.1 else f"÷{ratio:.1f}")
        tok = next(v for v in level.verdicts if v.metric.key == "output_tok_s")
        gain = 100 * (step[tok.best_cell].output_tok_s / step[tok.runner_cell].output_tok_s - 1)
        assert tok.margin == (f"+{gain:.1f} %" if gain < 10 else f"+{gain:.0f} %")


def test_noise_decision_is_the_gates_interval(many: Path) -> None:
    run = load_run(many)
    rows = rows_of(run.summary.cells, run.simulated_cells)
    headline = build_headline(rows, run.records)
    level = headline.levels[-1]
    v = next(v for v in level.verdicts if v.metric.key == "ttft_p99")
    by_cell = {r.cell.cell_id: r for r in rows if r.step.step_id == "c16"}
    steps = {(r.cell.cell_id, "c16"): (r.cell.cell_id, r.step) for r in by_cell.values()}
    samples = {s.cell_id: s for s in extract_samples(run.records, steps, None, "x")}
    measurer = Measurer(1000, 0, CONFIDENCE)

    def measure(cid: str):  # noqa: ANN202 - test helper
        row = by_cell[cid]
        group = StepGroup(key=(cid, "c16"), cell=row.cell, metrics=row.step, repeats=[samples[cid]])
        return measurer.measure(group, "ttft_p99")

    expected = change_interval(measure(v.best_cell), measure(v.runner_cell), CONFIDENCE)
    assert v.change is not None
    assert (v.change.lo, v.change.hi) == pytest.approx((expected.lo, expected.hi))
    assert v.beyond_noise == (expected.lo > 0 or expected.hi < 0)


def test_a_clear_winner_is_said_in_words(many: Path) -> None:
    run = load_run(many)
    headline = build_headline(rows_of(run.summary.cells, set()), run.records)
    # cell b is 1.35× slower at every load by construction, with 400 requests per step
    assert all(v.best_cell == A and v.beyond_noise for lv in headline.levels for v in lv.verdicts)
    # named by what differs between the two cells (server and max_num_seqs), not by cell id
    assert len(headline.lines) == 1 and headline.lines[0].startswith("vllm-a, max_num_seqs=8: TTFT p99 ÷")
    assert all(f"at {label}" in headline.lines[0] for label in ("1 user", "4 users", "16 users"))
    html = render_html(run)
    box = re.search(r'<section id="headline".*?</section>', html, re.S)
    assert box and headline.lines[0] in box.group(0)
    assert box.group(0).count('class="beyond"') == 9
    assert html.index('id="headline"') < html.index('id="summary"')
    assert "**Headline**" in render_markdown(run)


def test_thin_percentiles_are_never_called_a_difference(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, SyntheticOptions(requests_per_step=40)))
    headline = build_headline(rows_of(run.summary.cells, set()), run.records)
    for level in headline.levels:
        for v in level.verdicts:
            if v.metric.key.endswith("_p99"):
                assert v.thin and not v.beyond_noise
                assert "too few requests" in v.noise_note
                assert v.change is not None and not math.isfinite(v.change.hi)


def test_identical_cells_show_no_difference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic_run, "CELLS", ((A, 1.0), (B, 1.0)))
    run = load_run(make_run(tmp_path, SyntheticOptions(requests_per_step=400, concurrencies=(1, 4))))
    headline = build_headline(rows_of(run.summary.cells, set()), run.records)
    quiet = [lv.label for lv in headline.levels if not any(v.beyond_noise for v in lv.verdicts)]
    assert quiet, "two copies of one server model should not differ beyond the noise at every level"
    assert headline.lines[-1] == f"no difference beyond the noise at {', '.join(quiet)}"


def _row(cell: CellResult, step_id: str, kind: str, target: float) -> Row:
    step = cell.steps[0].model_copy(update={"step_id": step_id, "kind": kind, "target": target})
    return Row(cell=cell.model_copy(update={"steps": [step]}), step=step, simulated=False)


def test_best_is_never_judged_across_closed_and_open_loop(many: Path) -> None:
    run = load_run(many)
    a, b = run.summary.cells
    rows = [_row(a, "c8", "concurrency", 8), _row(b, "r4", "rate", 4), _row(b, "c2", "concurrency", 2)]
    assert load_levels(rows) == [("concurrency", 2), ("concurrency", 8), ("rate", 4)]
    headline = build_headline(rows, run.records.iloc[0:0])
    assert all(not lv.verdicts for lv in headline.levels) and headline.lines == []


def test_capacity_leads_when_the_summary_has_it(many: Path) -> None:
    run = load_run(many)
    cells = [
        c.model_copy(
            update={
                "capacity": Capacity(
                    req_s=cap, tok_s=cap * 10, target=0.99, precision=0.05, stop_reason="converged"
                )
            }
        )
        for c, cap in zip(run.summary.cells, (12.5, 9.0), strict=True)
    ]
    rows = rows_of(cells, set())
    assert capacity_lines(rows) == [
        f"{A}: capacity 12.5 req/s, 125 out tok/s",
        f"{B}: capacity 9 req/s, 90 out tok/s",
    ]
    assert capacity_lines(rows_of(run.summary.cells, set())) == []
    box = headline_box(build_headline(rows, run.records))
    assert box.index('id="headline_capacity"') < box.index('id="headline_lines"')


def _cell(cid: str, server: str = "vllm", backend: str = "vllm", **settings: object) -> Row:
    cell = CellResult(cell_id=cid, server=server, backend=backend, model="m", settings=settings, identity=cid)
    return Row(cell=cell, step=None, simulated=False)  # type: ignore[arg-type]


def test_cells_are_named_by_what_differs_between_them() -> None:
    from harness.report.headline import cell_names

    same_server = [_cell("a", max_num_seqs=16, dtype="bf16"), _cell("b", max_num_seqs=48, dtype="bf16")]
    assert cell_names(same_server) == {"a": "max_num_seqs=16", "b": "max_num_seqs=48"}
    servers = [_cell("v", max_num_seqs=16), _cell("t", server="tgi", backend="tgi", max_batch_size=16)]
    assert cell_names(servers) == {"v": "vllm, max_num_seqs=16", "t": "tgi, max_batch_size=16"}
    # nothing differs, or two cells would read alike: the cell id
    assert cell_names([_cell("a", x=1), _cell("b", x=1)]) == {"a": "a", "b": "b"}
