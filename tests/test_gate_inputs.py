"""What the gate refuses: incomplete runs and unreadable files exit 2 with a message, never a traceback.

Exit 1 means "regression", so an unreadable input that crashes with a
traceback (exit 1) would block a merge for the wrong reason, and an
interrupted run that passes (exit 0) would let one through.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gate_synth import write_run
from harness.gate.commands import register
from harness.records import write_records


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def invoke(app: typer.Typer, *args: object) -> tuple[int, str, BaseException | None]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return res.exit_code, re.sub(r"\s+", " ", res.output), exc


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    return {
        "base": write_run(tmp / "base", seed=1),
        "same": write_run(tmp / "same", seed=2),
        "interrupted": write_run(tmp / "interrupted", seed=3, complete=False),
    }


@pytest.fixture
def baseline(app: typer.Typer, runs: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "bl"
    code, out, _ = invoke(app, "baseline", "save", runs["base"], "--name", "main", "--dir", path)
    assert code == 0, out
    return path / "main.json"


def test_interrupted_run_is_refused_by_gate_and_baseline_save(
    app, runs, baseline: Path, tmp_path: Path
) -> None:
    code, out, exc = invoke(
        app, "gate", "--baseline", baseline, "--run", runs["interrupted"], "--out", tmp_path / "g"
    )
    assert code == 2 and exc is None, out
    assert "incomplete run" in out and "interrupted" in out and "--allow-incomplete" in out
    code, out, _ = invoke(
        app, "baseline", "save", runs["interrupted"], "--name", "x", "--dir", tmp_path / "b"
    )
    assert code == 2 and "incomplete run" in out and not (tmp_path / "b/x.json").exists()
    # allowed: judged on what it finished, and the outputs say what was conceded
    code, out, _ = invoke(
        app, "gate", "--baseline", baseline, "--run", runs["interrupted"], "--out", tmp_path / "g",
        "--allow-incomplete",
    )  # fmt: skip
    assert code in (0, 3), out
    assert "incomplete run used" in (tmp_path / "g/gate.md").read_text()
    assert json.loads((tmp_path / "g/gate.json").read_text())["notes"]
    code, out, _ = invoke(
        app,
        "baseline",
        "save",
        runs["interrupted"],
        "--name",
        "x",
        "--dir",
        tmp_path / "b",
        "--allow-incomplete",
    )
    assert code == 0 and "warning" in out


def test_killed_run_with_only_a_truncated_step_file(app, runs, baseline: Path, tmp_path: Path) -> None:
    """What a killed run leaves: no merged records.parquet, per-step files, the last one cut short."""
    killed = tmp_path / "killed"
    shutil.copytree(runs["same"], killed)
    merged = killed / "records.parquet"
    step = killed / "cells/sim-a/steps/c4/records.parquet"
    step.parent.mkdir(parents=True)
    data = merged.read_bytes()
    step.write_bytes(data[: len(data) // 2])
    merged.unlink()
    code, out, exc = invoke(app, "gate", "--baseline", baseline, "--run", killed, "--out", tmp_path / "g")
    assert code == 2 and exc is None, out
    assert "cells/sim-a/steps/c4/records.parquet" in out and "cannot read records" in out


@pytest.mark.parametrize("target", ["summary.json", "scenario.yaml", "env.json", "baseline", "policy"])
def test_binary_inputs_exit_2_with_a_message(app, runs, baseline: Path, tmp_path: Path, target: str) -> None:
    junk = bytes(range(256)) * 4
    run = tmp_path / "run"
    shutil.copytree(runs["same"], run)
    args: list[object] = ["gate", "--baseline", baseline, "--run", run, "--out", tmp_path / "g"]
    if target == "baseline":
        bad = tmp_path / "binary.json"
        bad.write_bytes(junk)
        args[2] = bad
    elif target == "policy":
        bad = tmp_path / "policy.yaml"
        bad.write_bytes(junk)
        args += ["--policy", bad]
    else:
        bad = run / target
        bad.write_bytes(junk)
    code, out, exc = invoke(app, *args)
    assert exc is None, f"traceback: {exc!r}"
    assert code == 2, out
    assert bad.name in out and "UTF-8" in out, out


def test_truncated_merged_records_and_corrupt_json_exit_2(app, runs, baseline: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["same"], run)
    data = (run / "records.parquet").read_bytes()
    (run / "records.parquet").write_bytes(data[:100])
    code, out, exc = invoke(app, "gate", "--baseline", baseline, "--run", run, "--out", tmp_path / "g")
    assert code == 2 and exc is None and "records.parquet" in out, out
    write_records(run / "records.parquet", [])
    (run / "summary.json").write_text('{"schema_version": 1, "run_id": ')
    code, out, exc = invoke(app, "gate", "--baseline", baseline, "--run", run, "--out", tmp_path / "g")
    assert code == 2 and exc is None and "not valid JSON" in out, out


def test_no_identity_match_hints_match_name_in_gate_and_compare(
    app, runs, baseline: Path, tmp_path: Path
) -> None:
    changed = write_run(tmp_path / "changed", seed=9, identity="ident-new-batch", itl_ms=11.5)
    code, out, _ = invoke(app, "gate", "--baseline", baseline, "--run", changed, "--out", tmp_path / "g")
    assert code == 2 and "--match name" in out and "sim-a / c4" in out, out
    code, out, _ = invoke(app, "compare", runs["base"], changed, "--out", tmp_path / "c")
    assert code == 2 and "--match name" in out, out


def test_identities_in_messages_survive_rich_markup(app, runs, tmp_path: Path) -> None:
    changed = write_run(tmp_path / "changed", seed=9, identity="ca26f00d", itl_ms=11.5)
    code, out, _ = invoke(app, "compare", runs["base"], changed, "--out", tmp_path / "c")
    assert code == 2 and "[ca26f00d]" in out, out


def test_cell_cut_short_by_the_interruption_is_not_a_regression(app, tmp_path: Path) -> None:
    cells = [("sim-a", "ident-a"), ("sim-b", "ident-b")]
    base = write_run(tmp_path / "base", seed=1, cells=cells)
    run = write_run(tmp_path / "run", seed=2, cells=cells, complete=False)
    summary = json.loads((run / "summary.json").read_text())
    summary["cells"][1].update(status="failed", error="interrupted", steps=[])
    (run / "summary.json").write_text(json.dumps(summary))
    code, out, _ = invoke(app, "baseline", "save", base, "--name", "b", "--dir", tmp_path / "bl")
    assert code == 0, out
    args = ["gate", "--baseline", tmp_path / "bl/b.json", "--run", run, "--out", tmp_path / "g"]
    code, out, _ = invoke(app, *args)
    assert code == 2 and "cells not finished: sim-b" in out, out
    code, out, _ = invoke(app, *args, "--allow-incomplete")
    data = json.loads((tmp_path / "g/gate.json").read_text())
    assert code != 1 and not [c for c in data["checks"] if c["metric"] == "cell_status"], out
    coverage = [c for c in data["checks"] if c["metric"] == "coverage"]
    assert coverage and coverage[0]["verdict"] == "inconclusive" and "sim-b" in coverage[0]["target"]
