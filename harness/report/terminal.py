"""The short table printed at the end of ``tokenbench run`` / ``tokenbench report``.

Why short: the terminal is for "did it work and roughly how fast"; the
HTML report is for the full story, so its path is printed last.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.report.capacity import capacity_lines
from harness.report.columns import (
    RETRY_NOTE,
    SUMMARY_COLUMNS,
    TERMINAL_KEYS,
    best_values,
    error_classes,
    is_best,
    rows_of,
)
from harness.report.data import RunData, cap_notes, length_notes, memory_notes
from harness.report.health import HEALTH_FIGURES, health_cells, verdict

TERMINAL_COLUMNS = [c for key in TERMINAL_KEYS for c in SUMMARY_COLUMNS if c.key == key]


def summary_table(run: RunData) -> Table:
    rows = rows_of(run.summary.cells, run.simulated_cells)
    best = best_values(rows, TERMINAL_COLUMNS)
    title = f"tokenbench: {run.summary.scenario}"
    if run.simulated_cells:
        title += " [bold magenta](SIMULATED)[/]"
    table = Table(title=title, title_justify="left")
    table.add_column("cell", style="bold")
    table.add_column("load")
    table.add_column("ok/total", justify="right")
    for col in TERMINAL_COLUMNS:
        table.add_column(col.label, justify="right")
    table.add_column("error classes")
    for row in rows:
        values = []
        for col in TERMINAL_COLUMNS:
            text = col.fmt(col.value(row))
            values.append(f"[bold green]{text}[/]" if is_best(col, row, best) else text)
        name = row.cell.cell_id + (" [magenta]SIM[/]" if row.simulated else "")
        if row.step.harness.limited:
            name += " [red](harness-limited)[/]"
        if row.step.exceeds_concurrency_cap:
            name += f" [yellow](over cap {row.cell.concurrency_cap})[/]"
        ok = f"{row.step.requests_ok}/{row.step.requests_total}"
        table.add_row(name, row.load_label, ok, *values, error_classes(row.step) or "–")
    return table


def health_table(run: RunData) -> Table:
    """Every step's harness self-diagnosis (``harness.report.health``): loop lag, CPU, chunks, connects."""
    table = Table(title="harness health", title_justify="left")
    table.add_column("cell", style="bold")
    table.add_column("load")
    for figure in HEALTH_FIGURES:
        table.add_column(figure.label, justify="right")
    table.add_column("verdict")
    for row in rows_of(run.summary.cells, run.simulated_cells):
        mark = "[red]LIMITED[/]" if row.step.harness.limited else verdict(row)
        table.add_row(escape(row.cell.cell_id), row.load_label, *health_cells(row), mark)
    return table


def print_summary(run: RunData, console: Console, report_path: Path | None = None) -> None:
    """Print the tables, any incomplete-run warnings, and where the full report is."""
    console.print(summary_table(run))
    if rows_of(run.summary.cells, run.simulated_cells):
        console.print(health_table(run))
    for cell in run.summary.cells:
        if cell.status != "ok":  # the error is text: a cell id in it reads like a markup tag
            text = f"{cell.cell_id}: {cell.error or 'no measurement'}"
            console.print(f"[red]{cell.status}:[/] {escape(text)}", markup=True, highlight=False)
    retried = sum(s.retry_after_responses for c in run.summary.cells for s in c.steps)
    if retried:
        console.print(f"[yellow]retry-after:[/] {retried} {RETRY_NOTE}", highlight=False)
    for line in cap_notes(run):
        console.print(f"[yellow]concurrency cap:[/] {escape(line)}", highlight=False)
    for line in memory_notes(run):
        console.print(f"[cyan]memory:[/] {escape(line)}", highlight=False)
    for line in length_notes(run):
        console.print(f"[yellow]output length:[/] {escape(line)}", highlight=False)
    for line in capacity_lines(run):
        console.print(f"[bold]capacity:[/] {escape(line)}", highlight=False)
    for problem in run.problems:
        console.print(f"[yellow]incomplete:[/] {escape(problem)}", highlight=False)
    path = report_path if report_path is not None else run.run_dir / "report.html"
    console.print(f"report: {path}", highlight=False, soft_wrap=True, markup=False)
