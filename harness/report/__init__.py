"""The run report: a self-contained HTML page, a Markdown summary and a terminal table.

Public entry points are re-exported here; see each module for the why.
"""

from __future__ import annotations

from harness.report.data import ReportError, RunData, load_run
from harness.report.html import FIGURE_IDS, render_html, write_report
from harness.report.markdown import render_markdown
from harness.report.terminal import print_summary

__all__ = [
    "FIGURE_IDS",
    "ReportError",
    "RunData",
    "load_run",
    "print_summary",
    "render_html",
    "render_markdown",
    "write_report",
]
