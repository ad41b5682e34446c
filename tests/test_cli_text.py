"""What the CLI prints about cells is text, never rich markup: ``[ca26...]`` is not a style tag.

Why a test of its own: rich reads ``[a...]``-``[f...]`` (a hex identity) as a markup tag and drops
it silently, so a user saw some identities and not others; nothing fails, the text is just gone.
"""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from rich.console import Console

from cli_runner import tokenbench
from harness.matrix import expand_cells
from harness.report import load_run, print_summary
from harness.scenario import parse_scenario
from synthetic_run import SyntheticOptions, make_run


def _scenario_with_hex_letter_identity() -> dict:
    """A valid scenario one of whose cell identities starts with a letter a-f (found, not assumed)."""
    for duration in range(1, 200):
        data = {
            "name": "ids",
            "servers": [{"name": "s", "backend": "sim", "model": "m", "settings": {"ttft_ms": [1, 2, 3]}}],
            "workload": {
                "prompt_tokens": 8,
                "output_tokens": 4,
                "steps": {"concurrency": [1]},
                "duration_s": duration,
            },
        }
        if any(c.identity[0] in "abcdef" for c in expand_cells(parse_scenario(data))):
            return data
    raise AssertionError("no identity starting with a-f in 200 tries")


def test_validate_prints_every_identity(tmp_path: Path) -> None:
    data = _scenario_with_hex_letter_identity()
    path = tmp_path / "ids.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = tokenbench("validate", path, extra_env={"COLUMNS": "200"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for cell in expand_cells(parse_scenario(data)):
        assert f"cell {cell.cell_id}  [{cell.identity}]" in proc.stdout


def test_summary_prints_errors_that_look_like_markup(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, SyntheticOptions(failed_cell=True))
    run = load_run(run_dir)
    failed = next(c for c in run.summary.cells if c.status != "ok")
    failed.error = "server died [cafe0123] [bold]x[/bold]"
    buf = io.StringIO()
    print_summary(run, Console(file=buf, width=200))
    assert f"failed: {failed.cell_id}: server died [cafe0123] [bold]x[/bold]" in buf.getvalue()


def test_sim_help_describes_every_option_with_its_default() -> None:
    """`tokenbench sim --help` is as complete as the typer commands': a description for every option,
    and the default wherever there is one."""
    import argparse

    from harness.sim.options import build_parser

    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 30
    assert [a.option_strings[0] for a in options if not (a.help or "").strip()] == []
    text = parser.format_help().split("\noptions:\n", 1)[1]  # past the usage lines
    for action in options:
        shown = action.default not in (None, [], "") and action.default is not False
        if shown and action.default is not argparse.SUPPRESS:
            block = text[text.index("\n  " + action.option_strings[0]) + 3 :].split("\n  --", 1)[0]
            assert "default" in block, action.option_strings[0]
    res = tokenbench("sim", "--help")
    assert res.returncode == 0 and "--itl-ms ITL_MS" in res.stdout and "(default: 10.0)" in res.stdout
