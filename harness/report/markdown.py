"""A compact GitHub-flavoured Markdown summary, for CI comments and job summaries.

Why separate from the HTML: a PR comment has no room for figures; it needs
the one table a reviewer scans, the same winners the HTML highlights (in
bold), and loud notes when a run is incomplete, simulated or had failures.
"""

from __future__ import annotations

from harness.report.capacity import capacity_lines
from harness.report.columns import (
    CHECK_COLUMNS,
    LATENCY_COLUMNS,
    THROUGHPUT_COLUMNS,
    Column,
    Level,
    Row,
    best_values,
    error_classes,
    is_best,
    rows_of,
    thin_note,
)
from harness.report.data import RunData, length_notes
from harness.report.headline import build_headline
from harness.report.health import HEALTH_FIGURES, health_cells, verdict
from harness.report.server_clock import server_clock_markdown

MD_COLUMNS: list[Column] = (
    [c for c in LATENCY_COLUMNS if c.key.startswith(("ttft", "tpot", "e2e"))]
    + THROUGHPUT_COLUMNS
    + [c for c in CHECK_COLUMNS if c.key == "out_tok_req"]
)


def _cell(text: str) -> str:
    """Table-safe text: pipes and newlines would break the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _row(row: Row, best: dict[tuple[Level, str], float]) -> str:
    values = []
    for col in MD_COLUMNS:
        text = col.fmt(col.value(row))
        text = f"**{text}**" if is_best(col, row, best) else text
        values.append(text + ("†" if thin_note(col, row) else ""))
    name = row.cell.cell_id + (" (SIMULATED)" if row.simulated else "")
    clock = row.step.server_clock
    flag = " ".join(
        f
        for f, on in (
            ("⚠ limited", row.step.harness.limited),
            ("⚠ client slower than server clock", clock and clock.flagged),
        )
        if on
    )
    ok = f"{row.step.requests_ok}/{row.step.requests_total}"
    errors = error_classes(row.step)
    return "| " + " | ".join(_cell(v) for v in [name, row.load_label, ok, *values, errors, flag]) + " |"


def _health_lines(rows: list[Row]) -> list[str]:
    """Every step's harness self-diagnosis, one bullet each (the table above stays one row per step)."""
    lines = ["**Harness health** (was the client in the way; where did connects happen)", ""]
    for row in rows:
        figures = ", ".join(f"{f.label} {t}" for f, t in zip(HEALTH_FIGURES, health_cells(row), strict=True))
        reasons = "; ".join(row.step.harness.reasons)
        tail = f" — {verdict(row)}" + (f": {reasons}" if reasons else "")
        lines.append(f"- `{_cell(row.cell.cell_id)}` {_cell(row.load_label)}: {_cell(figures)}{_cell(tail)}")
    return lines


def render_markdown(run: RunData, max_rows: int | None = None) -> str:
    """One table row per cell × step, then failures; best values in bold.

    ``max_rows`` keeps the first rows only and says how many were left out
    (``summary.md`` must fit a pull-request comment); the best values are
    still those of every row.
    """
    s = run.summary
    rows = rows_of(s.cells, run.simulated_cells)
    best = best_values(rows, MD_COLUMNS)
    dropped = 0 if max_rows is None else max(0, len(rows) - max_rows)
    shown_rows = rows[: len(rows) - dropped]
    lines = [f"### tokenbench: {s.scenario} (`{s.run_id}`)", ""]
    if run.simulated_cells:
        lines += [f"> **SIMULATED**: {', '.join(sorted(run.simulated_cells))} ran against a simulator.", ""]
        bands = sorted({f"{c.cell_id}: {c.simulated_band}" for c in s.cells if c.simulated_band})
        lines += [*(f"> {b}" for b in bands), ""] if bands else []
    if run.incomplete:
        lines += ["> **INCOMPLETE RUN**: " + "; ".join(run.problems), ""]
    headline = build_headline(rows, run.records, run.memo, run.itl_source())
    if headline.capacity or any(lv.verdicts for lv in headline.levels):
        lines += ["**Headline**", ""]
        lines += [f"- {_cell(line)}" for line in headline.capacity + headline.lines]
        lines.append("")
    header = ["cell", "load", "ok/total", *(c.label for c in MD_COLUMNS), "error classes", "harness"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":--", ":--", "--:"] + ["--:"] * len(MD_COLUMNS) + [":--", ":--"]) + "|")
    lines += [_row(r, best) for r in shown_rows]
    if dropped:
        lines.append(
            f"| _… {dropped} more rows: see summary.csv or report.html_ |" + " |" * (len(header) - 1)
        )
    if not rows:
        lines.append("| _no measured steps_ |" + " |" * (len(header) - 1))
    lines += server_clock_markdown(shown_rows)
    if shown_rows:
        lines += ["", *_health_lines(shown_rows)]
    lengths = length_notes(run)
    if lengths:
        lines += ["", "**Output lengths differ** (more than 5 % from the median of all cells' means)", ""]
        lines += [f"- `{_cell(n.split(': ', 1)[0])}`: {_cell(n.split(': ', 1)[1])}" for n in lengths]
    capacities = capacity_lines(run)
    if capacities:
        lines += ["", "**SLO capacity**", ""] + [f"- {_cell(line)}" for line in capacities]
    failed = [c for c in s.cells if c.status == "failed"]
    if failed:
        lines += ["", "**Failed cells**", ""]
        lines += [f"- `{c.cell_id}`: {_cell(c.error or 'failed')}" for c in failed]
    lines += [
        "",
        "_Latencies in ms from the scheduled send time; **bold** = best in column at that load level._",
    ]
    if any(thin_note(c, r) for r in shown_rows for c in MD_COLUMNS):
        lines += [
            "",
            "_† too few requests for this percentile (a bounded 95 % order-statistic interval needs "
            "368 for p99, 72 for p95): the value is no better than the maximum._",
        ]
    return "\n".join(lines) + "\n"
