"""The compare page: coloured by the policy's tolerance, a configuration diff, a one-line verdict on top."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from gate_synth import ENV, write_run
from harness.gate.commands import register


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("cmp")
    base = write_run(tmp / "base", seed=1, jitter_ms=0.3)
    # +0.5 % TTFT, measured precisely enough to be "significant", far inside a 10 % tolerance
    tiny = write_run(tmp / "tiny", seed=2, jitter_ms=0.3, ttft_ms=40.2)
    slow = write_run(tmp / "slow", seed=3, jitter_ms=0.3, itl_ms=11.5)
    scenario = yaml.safe_load((slow / "scenario.yaml").read_text())
    scenario["workload"]["duration_s"] = 25
    (slow / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    (slow / "env.json").write_text(json.dumps({**ENV, "gpu": {"name": "NVIDIA H100", "driver": "560"}}))
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["compare", str(base), str(tiny), str(slow), "--out", str(tmp / "out")])
    assert res.exit_code == 0, res.output
    return (tmp / "out/compare.html").read_text(), res.output


def _change_cell(html: str, section: int, metric: str, run: int) -> str:
    """The change <td> of ``metric`` for the ``run``-th compared run (1-based) in a step's table."""
    table = html.split('<h2 id="k')[section + 1]
    row = re.search(rf"<tr><td><code>{metric}</code></td>(.*?)</tr>", table, re.S)
    assert row, metric
    cells = re.findall(r"<td[^>]*>.*?</td>", row.group(1), re.S)
    return cells[2 * run]  # reference value, then (value, change) per run


def test_tiny_real_change_is_not_red_and_a_real_regression_is(page: tuple[str, str]) -> None:
    html, _ = page
    tiny = _change_cell(html, 0, "ttft_p50", 1)
    assert "+0.5%" in tiny and 'class="worse"' not in tiny, tiny
    assert "within tolerance" not in tiny and "policy max_increase 10%: pass" in tiny
    slow = _change_cell(html, 0, "tpot_p50", 2)
    assert 'class="worse"' in slow and "regression" in slow, slow
    unruled = _change_cell(html, 0, "itl_p95", 2)  # the default policy has no itl_p95 rule
    assert "class=" not in unruled.split(">")[0] and "no policy rule" in unruled


def test_one_line_verdict_on_top_and_in_the_terminal(page: tuple[str, str]) -> None:
    html, output = page
    verdict = re.search(r'<p class="verdict [a-z]+" id="verdict">(.*?)</p>', html, re.S)
    assert verdict and html.index('id="verdict"') < html.index("<h2")
    text = verdict.group(1)
    assert "tiny: inconclusive" in text and "slow: regression (" in text and "more)" in text
    assert "slow: regression" in output


def test_configuration_diff_between_the_runs(page: tuple[str, str]) -> None:
    html, _ = page
    section = html.split('<h2 id="config">')[1].split("<h2")[0]
    assert "<code>tiny</code>: same configuration" in section
    assert "scenario: workload.duration_s" in section and "25" in section
    assert "environment: gpu" in section and "NVIDIA H100" in section
    assert "secret-value" not in html  # cell env values never reach the page


def test_compare_page_says_when_a_percentile_rests_on_too_few_samples(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / f"r{i}", seed=i, duration_s=4) for i in range(2)]  # ~48 requests each
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "out/compare.html").read_text()
    p99 = _change_cell(html, 0, "ttft_p99", 1)
    assert "too few samples" in p99 and "unbounded" in p99
    assert "no better than the maximum" in html
    p50 = _change_cell(html, 0, "ttft_p50", 1)
    assert "too few samples" not in p50
