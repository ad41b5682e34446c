"""The report shows each step's failures by class, and counts responses that asked to be retried."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from harness.report import load_run, print_summary, render_html, render_markdown
from synthetic_run import SyntheticOptions, make_run

ERRORS = {"http_5xx": 3, "timeout": 1, "connect_timeout": 2, "stream_too_large": 0}
SHOWN = "http_5xx 3, connect_timeout 2, timeout 1 (2 with Retry-After, not retried)"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic run whose first cell's first step failed requests of three classes."""
    path = make_run(tmp_path_factory.mktemp("errors"), SyntheticOptions())
    summary = json.loads((path / "summary.json").read_text())
    step = summary["cells"][0]["steps"][0]
    step["errors"] = ERRORS
    step["retry_after_responses"] = 2
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_terminal_table_shows_error_classes_and_the_retry_note(run_dir: Path) -> None:
    buf = io.StringIO()
    print_summary(load_run(run_dir), Console(file=buf, width=400, color_system=None))
    out = buf.getvalue()
    assert "error classes" in out
    assert SHOWN in out
    assert "timeout 1" in out  # the synthetic run's own timeout in another cell
    assert "2 responses answered 429/503 with Retry-After" in out and "does not retry" in out


def test_html_summary_shows_error_classes_per_step(run_dir: Path) -> None:
    html = render_html(load_run(run_dir))
    assert '<th class="l">error classes</th>' in html
    assert f'<td class="l" data-col="error_classes">{SHOWN}</td>' in html
    assert "tokenbench counts them and does not retry" in html


def test_markdown_summary_shows_error_classes(run_dir: Path) -> None:
    assert SHOWN in render_markdown(load_run(run_dir))
