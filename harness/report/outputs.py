"""Everything a finished (or re-rendered) run writes beside its data, from one read of the run folder.

``report.html`` (the page), ``summary.md`` (a pull-request comment or job
summary, at most ``MAX_SUMMARY_MD`` characters), ``summary.csv`` and
``records.csv`` plus the derived columns of ``records.parquet``
(``harness.report.exports``). ``tokenbench run`` and ``tokenbench report``
both call :func:`write_outputs`, so a re-render refreshes them all.
"""

from __future__ import annotations

from pathlib import Path

from harness.atomic import write_text
from harness.report.data import RunData, load_run
from harness.report.exports import write_records_exports, write_summary_csv
from harness.report.html import render_html
from harness.report.markdown import render_markdown

# GitHub refuses comments over 65 536 characters; leave room for a caller's own header.
MAX_SUMMARY_MD = 60_000


def short_markdown(run: RunData, limit: int = MAX_SUMMARY_MD) -> str:
    """The Markdown summary, with table rows dropped from the end (and said so) until it fits ``limit``."""
    text = render_markdown(run)
    rows = sum(len(c.steps) for c in run.summary.cells)
    keep = rows
    while len(text) > limit and keep > 0:
        keep = keep // 2
        text = render_markdown(run, max_rows=keep)
    return text


def write_outputs(run_dir: Path | str) -> Path:
    """Write report.html, summary.md, summary.csv, records.csv (and derived records columns); the report path."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    path = run_dir / "report.html"
    write_text(path, render_html(run))
    write_text(run_dir / "summary.md", short_markdown(run))
    write_summary_csv(run_dir, run.summary)
    if (run_dir / "records.parquet").exists():
        write_records_exports(run_dir, run.records, run.summary.clock)
    return path
