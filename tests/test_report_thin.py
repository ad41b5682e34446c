"""The run report says when a percentile rests on too few requests to be a tail estimate.

A p99 of 40 requests is their maximum: the summary table marks it (†, with
the count on hover) instead of presenting it like a p99 of thousands.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.report.data import load_run
from harness.report.html import render_html
from harness.report.markdown import render_markdown
from synthetic_run import SyntheticOptions, make_run


def test_thin_p99_is_marked_in_html_and_markdown(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path / "few", SyntheticOptions(requests_per_step=40)))
    html = render_html(run)
    thin = re.findall(r'<td data-col="(\w+)" class="[^"]*\bthin\b[^"]*" title="([^"]*)"', html)
    cols = {c for c, _ in thin}
    assert "ttft_p99" in cols and "ttft_p50" not in cols
    assert all("rests on" in t and "368" in t for c, t in thin if c.endswith("_p99"))
    assert "too few requests for this percentile" in html
    md = render_markdown(run)
    assert "†" in md and "no better than the maximum" in md


def test_enough_requests_leave_the_table_unmarked(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path / "many", SyntheticOptions(requests_per_step=400, concurrencies=(4,))))
    assert not re.search(r'class="[^"]*\bthin\b', render_html(run)) and "†" not in render_markdown(run)
