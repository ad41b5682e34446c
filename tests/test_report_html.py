"""The HTML report: every figure present as inline SVG, offline-safe, honest about gaps."""

from __future__ import annotations

import math
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.report import FIGURE_IDS, ReportError, load_run, render_html, write_report
from harness.report.columns import SUMMARY_COLUMNS, rows_of
from harness.report.frontier import pareto_front
from synthetic_run import SyntheticOptions, make_run


class _Cells(HTMLParser):
    """Collects summary-table cells as (row cell_id, step_id, column key, classes, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.ids: list[str] = []
        self._row: tuple[str, str] | None = None
        self._td: tuple[str, str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "tr" and "data-cell" in a:
            self._row = (a["data-cell"], a["data-step"])
        elif tag == "td" and self._row and "data-col" in a:
            self._td, self._text = (a["data-col"], a.get("class", "")), ""

    def handle_data(self, data: str) -> None:
        if self._td:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._td and self._row:
            self.rows.append((*self._row, *self._td, self._text))
            self._td = None
        elif tag == "tr":
            self._row = None


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = make_run(tmp_path_factory.mktemp("full"), SyntheticOptions(failed_cell=True))
    return run_dir, render_html(load_run(run_dir))


def _figure(html: str, fig_id: str) -> str:
    m = re.search(rf'<figure id="{fig_id}" data-figure="{fig_id}">(.*?)</figure>', html, re.S)
    assert m, f"figure {fig_id} missing"
    return m.group(1)


def test_every_figure_is_inline_svg_with_caption(full: tuple[Path, str]) -> None:
    _, html = full
    for fig_id in FIGURE_IDS:
        body = _figure(html, fig_id)
        assert "<svg" in body and "</svg>" in body, fig_id
        assert re.search(r"<figcaption>.+</figcaption>", body, re.S), fig_id


def test_no_external_resources_and_no_scripts(full: tuple[Path, str]) -> None:
    _, html = full
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    assert refs, "expected internal svg references"
    assert [r for r in refs if not r.startswith("#")] == []
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html)
    assert "@import" not in html and "<script" not in html.lower() and "<link" not in html.lower()


def test_ids_are_unique_across_inline_svgs(full: tuple[Path, str]) -> None:
    parser = _Cells()
    parser.feed(full[1])
    dupes = [i for i, n in Counter(parser.ids).items() if n > 1]
    assert dupes == []


def test_best_value_per_column_is_highlighted_within_each_load_level(full: tuple[Path, str]) -> None:
    run_dir, html = full
    run = load_run(run_dir)
    rows = rows_of(run.summary.cells, run.simulated_cells)
    parser = _Cells()
    parser.feed(html)
    assert len({(c, s) for c, s, *_ in parser.rows}) == len(rows) == 6
    levels = {(r.cell.cell_id, r.step.step_id): (r.step.kind, r.step.target) for r in rows}
    for col in SUMMARY_COLUMNS:
        if col.better is None:
            assert not [r for r in parser.rows if r[2] == col.key and "best" in r[3]]
            continue
        expected: set[tuple[str, str]] = set()
        for level in set(levels.values()):
            values = {
                k: col.value(r)
                for r in rows
                if (k := (r.cell.cell_id, r.step.step_id)) and levels[k] == level
            }
            finite = [v for v in values.values() if v is not None and math.isfinite(v)]
            if len(finite) < 2 or min(finite) == max(finite):
                continue
            target = min(finite) if col.better == "min" else max(finite)
            expected |= {k for k, v in values.items() if v is not None and math.isclose(v, target)}
        marked = {(c, s) for c, s, key, cls, _ in parser.rows if key == col.key and "best" in cls}
        assert marked == expected, col.key
        for c, s, key, cls, text in parser.rows:
            if key == col.key and "best" in cls:
                row = next(r for r in rows if (r.cell.cell_id, r.step.step_id) == (c, s))
                assert text == col.fmt(col.value(row))
    # the synthetic run has two cells at three load levels: each level has its own winner
    ttft = {s for c, s, key, cls, _ in parser.rows if key == "ttft_p50" and "best" in cls}
    assert ttft == {"c1", "c4", "c16"}


def test_failed_cell_shows_error_and_log_tail(full: tuple[Path, str]) -> None:
    _, html = full
    assert "server exited with code 1 before becoming healthy" in html
    assert "ERROR torch.OutOfMemoryError: cannot allocate KV cache (64 seqs)" in html
    assert 'id="cell-vllm-c__max_num_seqs-64"' in html


def test_secrets_never_reach_the_report(full: tuple[Path, str]) -> None:
    _, html = full
    assert "sk-secret-123" not in html and "hf_secret_456" not in html
    assert "--api-key REDACTED" in html


def test_complete_real_run_has_no_banners(full: tuple[Path, str]) -> None:
    _, html = full
    assert 'id="incomplete_banner"' not in html and "SIMULATED" not in html


def test_harness_limited_step_is_flagged(full: tuple[Path, str]) -> None:
    _, html = full
    section = html[html.index('id="harness_health"') :]
    assert section.count('class="badge limited">LIMITED') == 1
    assert "event-loop lag p99 above 50 ms" in section


def test_incomplete_simulated_run_shows_banners(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, SyntheticOptions(complete=False, simulated=True))
    html = render_html(load_run(run_dir))
    banner = re.search(r'id="incomplete_banner">(.*?)</div>', html, re.S)
    assert banner and "interrupted" in banner.group(1) and "vllm-d__max_num_seqs-128" in banner.group(1)
    assert 'id="simulated_banner"' in html
    assert html.count(">SIMULATED</span>") >= 6  # every summary row and every cell


def test_missing_optional_files_still_render_every_slot(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, SyntheticOptions(prometheus=False))
    (run_dir / "timeseries.parquet").unlink()
    (run_dir / "records.parquet").unlink()
    (run_dir / "env.json").unlink()
    html = render_html(load_run(run_dir))
    assert 'id="incomplete_banner"' in html and "timeseries.parquet is missing" in html
    for fig_id in FIGURE_IDS:
        assert "<svg" in _figure(html, fig_id)
    assert "Not available" in _figure(html, "kv_cache_timeline")
    assert "Not available" in _figure(html, "queue_timeline")
    assert "No per-request records" in _figure(html, "latency_cdf")


def test_no_prometheus_and_no_gpu_are_explained(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, SyntheticOptions(prometheus=False, gpu=False))
    html = render_html(load_run(run_dir))
    assert "Not available" in _figure(html, "kv_cache_timeline")
    assert "no GPU" in _figure(html, "memory_peak")


def test_gpu_run_plots_vram(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, SyntheticOptions(gpu=True))
    body = _figure(render_html(load_run(run_dir)), "memory_peak")
    assert "GPU memory" in body and "no GPU" not in body


def test_malformed_summary_names_file_and_field(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    text = (run_dir / "summary.json").read_text().replace('"complete": true', '"complete": "maybe"')
    (run_dir / "summary.json").write_text(text)
    with pytest.raises(ReportError, match=r"summary\.json.*\n.*complete.*maybe"):
        load_run(run_dir)


def test_write_report_is_atomic_and_complete(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    assert path.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_pareto_front() -> None:
    points = [(10.0, 5.0), (20.0, 4.0), (5.0, 1.0), (30.0, 9.0), (float("nan"), 99.0), (10.0, 3.0)]
    assert pareto_front(points) == [2, 0, 3]
    assert pareto_front([]) == []
