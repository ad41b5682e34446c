"""``tokenbench gate | compare | baseline save``: exit codes, files written, bad input never passes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gate_synth import ENV, write_run
from harness.gate.commands import register
from harness.records import write_records


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {
        "base": write_run(tmp / "base", seed=1),
        **{f"base{i}": write_run(tmp / f"base{i}", seed=10 * i + 1) for i in range(2, 6)},
        "same": write_run(tmp / "same", seed=2),
        "slow": write_run(tmp / "slow", seed=3, itl_ms=11.5),
        "tiny": write_run(tmp / "tiny", seed=4, duration_s=0.4),
        "errors": write_run(tmp / "errors", seed=5, error_rate=0.05),
        # second repeats: with repeats on both sides the default policy judges tail rules too
        "same2": write_run(tmp / "same2", seed=12),
        "slow2": write_run(tmp / "slow2", seed=13, itl_ms=11.5),
        "tiny2": write_run(tmp / "tiny2", seed=14, duration_s=0.4),
        "errors2": write_run(tmp / "errors2", seed=15, error_rate=0.05),
        "allfail": write_run(tmp / "allfail", seed=6, error_rate=1.0, duration_s=2),
        "gpu": write_run(tmp / "gpu", seed=7, env={**ENV, "gpu": {"name": "NVIDIA H100", "driver": "560"}}),
        # same configuration under another cell name and in a different position: must still match
        "renamed": write_run(tmp / "renamed", seed=8, cells=[("other", "ident-z"), ("renamed-a", "ident-a")]),
    }


def invoke(app: typer.Typer, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture
def baseline(app: typer.Typer, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    # five repeats: the gate can then judge tail rules on one run with between-run noise (df = 4)
    repeats = [runs["base"]] + [runs[f"base{i}"] for i in range(2, 6)]
    code, out = invoke(app, "baseline", "save", *repeats, "--name", "main")
    assert code == 0, out
    assert (tmp_path / "reports/baselines/main.json").is_file()
    return "main"


@pytest.mark.parametrize(("run", "expected"), [("same", 0), ("slow", 1), ("errors", 1), ("tiny", 3)])
def test_exit_codes(app, runs, baseline, tmp_path: Path, run: str, expected: int) -> None:
    out_dir = tmp_path / f"gate-{run}"
    both = ["--run", runs[run], "--run", runs[f"{run}2"]]
    code, out = invoke(app, "gate", "--baseline", baseline, *both, "--out", out_dir)
    assert code == expected, out
    data = json.loads((out_dir / "gate.json").read_text())
    assert data["exit_code"] == expected
    ET.parse(out_dir / "gate.junit.xml")
    assert (out_dir / "gate.md").read_text().startswith("## ")


def test_inconclusive_can_pass_by_flag_or_policy(app, runs, baseline, tmp_path: Path) -> None:
    code, _ = invoke(
        app,
        "gate",
        "--baseline",
        baseline,
        "--run",
        runs["tiny"],
        "--out",
        tmp_path / "o",
        "--inconclusive-passes",
    )
    assert code == 0
    pol = tmp_path / "p.yaml"
    pol.write_text("inconclusive_fails: false\nrules:\n  tpot_p50: {max_increase: 10%}\n")
    code, _ = invoke(
        app, "gate", "--baseline", baseline, "--run", runs["tiny"], "--out", tmp_path / "o2", "--policy", pol
    )
    assert code == 0


def test_one_run_leaves_tails_inconclusive_unless_the_policy_judges_them(
    app, runs, baseline, within: Path, tmp_path: Path
) -> None:
    code, out = invoke(app, "gate", "--baseline", baseline, "--run", runs["same"], "--out", tmp_path / "o")
    assert code == 3, out
    data = json.loads((tmp_path / "o/gate.json").read_text())
    open_checks = [c for c in data["checks"] if c["verdict"] != "pass"]
    assert open_checks and all(c["metric"].endswith("_p95") for c in open_checks)
    assert all("one repeat" in c["message"] for c in open_checks)
    code, out = invoke(
        app,
        "gate",
        "--baseline",
        baseline,
        "--run",
        runs["same"],
        "--out",
        tmp_path / "w",
        "--policy",
        within,
    )
    assert code == 0, out


@pytest.fixture
def within(tmp_path: Path) -> Path:
    """The shipped policy, with tail rules judged on one run (single_repeat_tails: within_run)."""
    from harness.gate.policy import load_policy

    path = tmp_path / "within.yaml"
    data = load_policy().model_dump(mode="json") | {"single_repeat_tails": "within_run"}
    path.write_text(json.dumps(data))
    return path


def test_gate_outputs_default_into_the_run_folder(app, runs, baseline, within: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs["same"], run)
    code, _ = invoke(app, "gate", "--baseline", baseline, "--run", run, "--policy", within)
    assert code == 0
    assert {p.name for p in (run / "gate").iterdir()} == {"gate.md", "gate.junit.xml", "gate.json"}


def test_matches_by_identity_not_position_or_name(app, runs, baseline, within: Path, tmp_path: Path) -> None:
    code, out = invoke(
        app,
        "gate",
        "--baseline",
        baseline,
        "--run",
        runs["renamed"],
        "--out",
        tmp_path / "o",
        "--policy",
        within,
    )
    assert code == 0, out
    data = json.loads((tmp_path / "o/gate.json").read_text())
    assert {c["identity"] for c in data["checks"]} == {"ident-a"}
    assert [m["cell_id"] for m in data["mismatches"]] == ["other"]


def test_env_mismatch_refused_unless_allowed(app, runs, baseline, within: Path, tmp_path: Path) -> None:
    code, out = invoke(app, "gate", "--baseline", baseline, "--run", runs["gpu"], "--out", tmp_path / "o")
    assert code == 2
    assert "NVIDIA H100" in out and "--allow-env-mismatch" in out
    code, out = invoke(
        app,
        "gate",
        "--baseline",
        baseline,
        "--run",
        runs["gpu"],
        "--out",
        tmp_path / "o",
        "--allow-env-mismatch",
        "--policy",
        within,
    )
    assert code == 0, out
    assert "H100" in (tmp_path / "o/gate.md").read_text()


def test_bad_input_exits_2_with_a_clear_message(app, runs, baseline, tmp_path: Path) -> None:
    cases: list[tuple[list, str]] = [
        (["--baseline", "nope", "--run", runs["same"]], "baseline not found"),
        (["--baseline", baseline, "--run", runs["allfail"]], "every request failed"),
        (["--baseline", baseline, "--run", tmp_path / "missing"], "no such run folder"),
    ]
    empty = tmp_path / "empty"
    write_run(empty, seed=1)
    write_records(empty / "records.parquet", [])
    cases.append((["--baseline", baseline, "--run", empty], "no records"))
    old = tmp_path / "reports/baselines/old.json"
    data = json.loads((tmp_path / "reports/baselines/main.json").read_text())
    data["schema_version"] = 0
    old.write_text(json.dumps(data))
    cases.append((["--baseline", "old", "--run", runs["same"]], "schema_version"))
    summary_v2 = tmp_path / "v2"
    write_run(summary_v2, seed=1)
    s = json.loads((summary_v2 / "summary.json").read_text())
    s["schema_version"] = 2
    (summary_v2 / "summary.json").write_text(json.dumps(s))
    cases.append((["--baseline", baseline, "--run", summary_v2], "schema_version is 2"))
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("rules:\n  ttft_p59: {max_increase: 10%}\n")
    cases.append((["--baseline", baseline, "--run", runs["same"], "--policy", bad_policy], "ttft_p59"))
    for args, needle in cases:
        code, out = invoke(app, "gate", *args, "--out", tmp_path / "o")
        assert code == 2, (args, out)
        assert needle in re.sub(r"\s+", " ", out), (needle, out)


def test_baseline_save_refuses_bad_names_and_runs(app, runs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = invoke(app, "baseline", "save", runs["base"], "--name", "../x")
    assert code == 2 and "--name" in out
    code, out = invoke(app, "baseline", "save", runs["allfail"], "--name", "x")
    assert code == 2 and "every request failed" in out
    code, out = invoke(app, "baseline", "save", runs["base"], runs["same"], "--name", "two")
    assert code == 0, out
    data = json.loads((tmp_path / "reports/baselines/two.json").read_text())
    assert len(data["samples"]) == 2  # two repeats of the one step
    assert data["fingerprint"]["cpu"] == "Synthetic CPU"


def test_compare_writes_offline_html_and_markdown(app, runs, tmp_path: Path) -> None:
    out_dir = tmp_path / "cmp"
    code, out = invoke(app, "compare", runs["base"], runs["same"], runs["slow"], "--out", out_dir)
    assert code == 0, out
    html = (out_dir / "compare.html").read_text()
    md = (out_dir / "compare.md").read_text()
    assert html.count("<svg") == 2  # one CDF figure and one forest plot for the one matched step
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html)
    assert "url(http" not in html and "<script" not in html and "@import" not in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert "tpot_p50" in md and "slow" in md
    for line in md.splitlines():
        if line.startswith("| `"):
            assert line.count("|") == 8


def test_compare_needs_common_configuration(app, runs, tmp_path: Path) -> None:
    code, out = invoke(app, "compare", runs["base"], tmp_path / "nope")
    assert code == 2
    code, out = invoke(app, "compare", runs["base"])
    assert code == 2 and "at least two" in out


def test_match_by_name_when_the_settings_are_the_change(app, runs, baseline, tmp_path: Path) -> None:
    changed = write_run(tmp_path / "changed", seed=9, identity="ident-new-batch", itl_ms=11.5)
    code, out = invoke(app, "gate", "--baseline", baseline, "--run", changed, "--out", tmp_path / "o")
    assert code == 2 and "not in the baseline" in out
    code, out = invoke(
        app, "gate", "--baseline", baseline, "--run", changed, "--out", tmp_path / "o", "--match", "name"
    )
    assert code == 1, out
    code, out = invoke(app, "gate", "--baseline", baseline, "--run", changed, "--match", "position")
    assert code == 2 and "--match" in out
