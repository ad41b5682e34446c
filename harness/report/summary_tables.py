"""The top of the report: the headline box, the default summary table, and the full table below it.

Why two tables: the full table has 20 columns and does not fit a laptop
screen, so nobody reads it. The default table keeps what decides between
cells (TTFT and TPOT p50/p99, tokens/s, errors by class, flags) and fits in
1400 px; every other column stays one click away in a ``<details>``. Both
tables mark the best value per column *within one load level*, and mark a
percentile resting on too few requests (†), with the gate's interval on
hover.
"""

from __future__ import annotations

import math
from html import escape

from harness.report.columns import (
    RETRY_NOTE,
    SUMMARY_COLUMNS,
    Column,
    Row,
    best_values,
    error_classes,
    fmt_ms,
    fmt_pct,
    is_best,
    thin_note,
)
from harness.report.headline import METRICS, Headline
from harness.report.sections import swatch

COMPACT_KEYS: tuple[str, ...] = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "out_tok_s")
COMPACT_COLUMNS: list[Column] = [c for key in COMPACT_KEYS for c in SUMMARY_COLUMNS if c.key == key]

THIN_LEGEND = (
    " † too few requests for this percentile: a bounded 95 % order-statistic interval needs more "
    "(p99: 368, p95: 72), so the value is no better than the maximum (hover for the count)."
)


def _interval_text(bounds: tuple[float, float] | None) -> str | None:
    if bounds is None:
        return None
    lo, hi = bounds
    hi_text = "∞ (unbounded: too few requests)" if not math.isfinite(hi) else fmt_ms(hi)
    lo_text = "0" if not math.isfinite(lo) else fmt_ms(lo)
    return f"gate's 95 % interval [{lo_text}, {hi_text}] ms"


def _td(col: Column, row: Row, best: dict, headline: Headline | None) -> tuple[str, bool]:
    """One numeric cell: best/thin classes, and a title with the reasons and the gate's interval."""
    classes, titles = [], []
    if is_best(col, row, best):
        classes, titles = ["best"], ["best in column at this load"]
    thin = thin_note(col, row)
    if thin:  # marked by CSS (td.thin::after), so the cell's text stays the number
        classes.append("thin")
        titles.append(thin)
    if headline is not None:
        interval = _interval_text(headline.intervals.get((row.cell.cell_id, row.step.step_id, col.key)))
        if interval:
            titles.append(interval)
    cls = f' class="{" ".join(classes)}"' if classes else ""
    title = f' title="{escape("; ".join(titles))}"' if titles else ""
    return f'<td data-col="{col.key}"{cls}{title}>{escape(col.fmt(col.value(row)))}</td>', bool(thin)


def _lead(row: Row, colors: dict[str, str]) -> str:
    sim = ' <span class="badge sim">SIMULATED</span>' if row.simulated else ""
    return (
        f'<td class="l cell">{swatch(colors.get(row.cell.cell_id, "#374151"))}'
        f'{escape(row.cell.cell_id)}{sim}</td><td class="l">{escape(row.load_label)}</td>'
        f"<td>{row.step.requests_ok}/{row.step.requests_total}</td>"
    )


def _row_attrs(row: Row) -> str:
    limited = row.step.harness.limited
    return (
        f'<tr class="{"limited" if limited else ""}" data-cell="{escape(row.cell.cell_id)}" '
        f'data-step="{escape(row.step.step_id)}">'
    )


def _flags(row: Row, thin: bool) -> str:
    flags = []
    if row.step.harness.limited:
        flags.append('<span class="badge limited">harness-limited</span>')
    if row.step.exceeds_concurrency_cap:
        flags.append('<span class="badge limited">over server cap</span>')
    if thin:
        flags.append('<span class="badge few">few samples</span>')
    return " ".join(flags) or "–"


def _errors(row: Row) -> str:
    rate = fmt_pct(row.step.error_rate)
    classes = error_classes(row.step)
    return f"{rate} ({classes})" if classes else rate


def _legend(rows: list[Row], thin_seen: bool) -> str:
    retried = sum(row.step.retry_after_responses for row in rows)
    return (
        '<p class="legend-note">One row per cell × load step. Latencies are measured from the scheduled '
        "send time. Highlighted: best value in the column among the cells at the same load level "
        "(lowest latency and error rate, highest throughput); a closed-loop and an open-loop step are "
        "never compared."
        + (THIN_LEGEND if thin_seen else "")
        + (f' <span class="retry-note">{retried} {escape(RETRY_NOTE)}.</span>' if retried else "")
        + "</p>"
    )


def compact_table(rows: list[Row], colors: dict[str, str], headline: Headline | None) -> tuple[str, bool]:
    """The default table (fits 1400 px) and whether any percentile in it is thin."""
    best = best_values(rows, COMPACT_COLUMNS)
    body, thin_seen = [], False
    for row in rows:
        cells, thin_row = [], False
        for col in COMPACT_COLUMNS:
            td, thin = _td(col, row, best, headline)
            cells.append(td)
            thin_row |= thin
        thin_seen |= thin_row
        body.append(
            f"{_row_attrs(row)}{_lead(row, colors)}{''.join(cells)}"
            f'<td class="l err" data-col="errors">{escape(_errors(row))}</td>'
            f'<td class="l flag" data-col="flags">{_flags(row, thin_row)}</td></tr>'
        )
    if not body:
        body.append(f'<tr><td class="l" colspan="{len(COMPACT_COLUMNS) + 5}">No measured steps.</td></tr>')
    head = "".join(f"<th>{escape(c.label)}</th>" for c in COMPACT_COLUMNS)
    table = (
        '<div class="table-wrap"><table id="summary_compact" class="compact"><thead><tr>'
        f'<th class="l">cell</th><th class="l">load</th><th>ok/total</th>{head}'
        '<th class="l">errors (by class)</th><th class="l">flags</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    return table, thin_seen


def full_table(rows: list[Row], colors: dict[str, str], headline: Headline | None) -> tuple[str, bool]:
    """Every summary column, one row per cell × step (inside a ``<details>`` below the default table)."""
    best = best_values(rows, SUMMARY_COLUMNS)
    body, thin_seen = [], False
    for row in rows:
        cells = []
        for col in SUMMARY_COLUMNS:
            td, thin = _td(col, row, best, headline)
            cells.append(td)
            thin_seen |= thin
        limited = row.step.harness.limited
        flag = '<span class="badge limited">harness-limited</span>' if limited else "no"
        body.append(
            f'{_row_attrs(row)}{_lead(row, colors)}{"".join(cells)}<td class="flag">{flag}</td>'
            f'<td class="l" data-col="error_classes">{escape(error_classes(row.step) or "–")}</td></tr>'
        )
    if not body:
        body.append(f'<tr><td class="l" colspan="{len(SUMMARY_COLUMNS) + 5}">No measured steps.</td></tr>')
    head = "".join(f"<th>{escape(c.label)}</th>" for c in SUMMARY_COLUMNS)
    table = (
        '<div class="table-wrap"><table id="summary_table"><thead><tr><th class="l">cell</th><th class="l">load</th>'
        f"<th>ok/total</th>{head}<th>harness-limited</th>"
        '<th class="l">error classes</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    return table, thin_seen


def summary_section(rows: list[Row], colors: dict[str, str], headline: Headline | None = None) -> str:
    compact, thin_a = compact_table(rows, colors, headline)
    full, thin_b = full_table(rows, colors, headline)
    return (
        f'<section id="summary"><h2>Summary</h2>{_legend(rows, thin_a or thin_b)}{compact}'
        f'<details id="summary_full"><summary>All columns (ITL, E2E, goodput, output length, '
        f"token agreement, chunks/token)</summary>{full}</details></section>"
    )


def headline_box(headline: Headline) -> str:
    """The answer at a glance: sentences first, then the best cell per metric per load level."""
    parts = ['<section id="headline" class="headline"><h2>Headline</h2>']
    if headline.capacity:
        items = "".join(f"<li>{escape(line)}</li>" for line in headline.capacity)
        parts.append(f'<ul class="capacity" id="headline_capacity">{items}</ul>')
    compared = [lv for lv in headline.levels if lv.verdicts]
    if not compared:
        parts.append(
            '<p class="lead">Nothing to compare: no load level was measured on two or more cells.</p></section>'
        )
        return "".join(parts)
    items = "".join(f"<li>{escape(line)}</li>" for line in headline.lines)
    parts.append(f'<ul class="lead" id="headline_lines">{items}</ul>')
    head = "".join(f"<th>{escape(m.label)}</th>" for m in METRICS)
    body = []
    for level in compared:
        cells = []
        for metric in METRICS:
            v = next((v for v in level.verdicts if v.metric.key == metric.key), None)
            if v is None:
                cells.append(f'<td data-metric="{metric.key}">–</td>')
                continue
            cls = "beyond" if v.beyond_noise else "within"
            cells.append(
                f'<td class="{cls}" data-metric="{v.metric.key}" data-best="{escape(v.best_cell)}" '
                f'title="{escape(v.interval)}"><strong>{escape(headline.names.get(v.best_cell, v.best_cell))}'
                f"</strong> {escape(v.margin)} vs {escape(headline.names.get(v.runner_cell, v.runner_cell))}<br>"
                f'<span class="legend-note">{escape(v.noise_note)}</span></td>'
            )
        body.append(
            f'<tr data-level="{escape(level.label)}"><td class="l">{escape(level.label)}</td>{"".join(cells)}</tr>'
        )
    parts.append(
        '<div class="table-wrap"><table id="headline_table"><thead><tr><th class="l">load</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        '<p class="legend-note">Best cell per metric at each load level against the runner-up (÷: how many '
        "times lower its latency; +%: how much more output tokens/s). Beyond the noise: the gate's 95 % "
        "interval of the difference (order statistics for percentiles, bootstrap of window rates for "
        "throughput) excludes zero; hover for the interval.</p></section>"
    )
    return "".join(parts)
