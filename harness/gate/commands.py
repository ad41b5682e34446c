"""CLI verbs of the gate area: ``compare``, ``gate`` and ``baseline save``.

Exit codes: 0 pass, 1 regression, 2 bad input or usage, 3 inconclusive (0
instead when the policy sets ``inconclusive_fails: false`` or
``--inconclusive-passes`` is given). Bad input never becomes a pass.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from harness.atomic import write_text
from harness.gate.match import MatchBy, name_hint, rekey
from harness.gate.policy import PolicyError
from harness.gate.rundata import GateInputError, GateRun

BASELINE_DIR = Path("reports/baselines")  # relative to the current directory, like ./reports
BASELINES_HELP = "folder that bare baseline names resolve against"
MATCH_HELP = (
    "pair cells by configuration 'identity' (default) or by cell 'name' when the settings are what changed"
)


def _match_by(console: Console, value: str) -> MatchBy:
    if value not in ("identity", "name"):
        raise _bad(console, f"--match {value!r}: expected 'identity' or 'name'")
    return value  # type: ignore[return-value]


ALLOW_INCOMPLETE_HELP = "use an interrupted or unfinished run's finished steps instead of refusing it"


def _guarded(what: str, load: Callable[[], GateRun]) -> GateRun:
    """Any unreadable input is a ``GateInputError`` (exit 2), never a traceback read as exit 1."""
    try:
        return load()
    except (GateInputError, PolicyError):
        raise
    except (OSError, UnicodeError, ValueError, RecursionError) as err:
        raise GateInputError(f"{what}: cannot read it ({type(err).__name__}: {err})") from None


def _load_side(ref: str | Path, allow_incomplete: bool = False, baselines: Path = BASELINE_DIR) -> GateRun:
    """A run folder or a baseline file (by path, or by name under ``baselines``)."""
    from harness.gate.baseline import load_baseline, resolve_baseline
    from harness.gate.rundata import load_run_folder

    path = Path(ref)
    if path.is_dir():
        return _guarded(str(path), lambda: load_run_folder(path, allow_incomplete=allow_incomplete))
    resolved = resolve_baseline(str(ref), baselines)
    return _guarded(str(resolved), lambda: load_baseline(resolved))


def _load_runs(paths: list[Path], allow_incomplete: bool = False, **kw: int) -> GateRun:
    from harness.gate.rundata import load_run_folder, merge_repeats

    return merge_repeats(
        [
            _guarded(str(p), lambda p=p: load_run_folder(p, allow_incomplete=allow_incomplete, **kw))  # type: ignore[misc]
            for p in paths
        ]
    )


def _no_match(console: Console, what: str, mismatches: list, sides: list[GateRun], by: str) -> typer.Exit:
    lines = [m.describe() for m in mismatches]
    hint = name_hint(sides) if by == "identity" else None
    return _bad(console, f"{what}:\n  " + "\n  ".join(lines) + (f"\n{hint}" if hint else ""))


def _bad(console: Console, message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(2)


def compare(
    runs: Annotated[list[str], typer.Argument(help="run folders or baselines; the first is the reference")],
    out: Annotated[Path | None, typer.Option("--out", help="folder for compare.html and compare.md")] = None,
    confidence: Annotated[float, typer.Option(help="interval confidence")] = 0.95,
    match: Annotated[str, typer.Option("--match", help=MATCH_HELP)] = "identity",
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="gate policy whose tolerances colour the page (default: shipped)"),
    ] = None,
    baselines: Annotated[Path, typer.Option("--baselines", help=BASELINES_HELP)] = BASELINE_DIR,
) -> None:
    """Compare runs matched by configuration identity: deltas with intervals, overlaid figures."""
    from harness.gate.compare_report import write_compare
    from harness.gate.comparison import compare_runs
    from harness.gate.policy import load_policy

    console = Console()
    if len(runs) < 2:
        raise _bad(console, "compare needs at least two runs")
    if not 0.5 < confidence < 1:
        raise _bad(console, f"--confidence {confidence}: expected a value between 0.5 and 1")
    by = _match_by(console, match)
    try:
        pol = load_policy(policy).model_copy(update={"confidence": confidence})
        sides = [rekey(_load_side(r, allow_incomplete=True, baselines=baselines), by) for r in runs]
    except (GateInputError, PolicyError) as err:
        raise _bad(console, str(err)) from None
    labels = [s.label for s in sides]
    for i, s in enumerate(sides):  # labels identify runs in tables and legends: keep them unique
        if labels.count(s.label) > 1:
            s.label = f"{s.label}#{i + 1}"
    comp = compare_runs(sides, policy=pol)
    if not comp.keys:
        raise _no_match(
            console,
            "no configuration (cell identity + step) appears in every run",
            comp.mismatches,
            sides,
            by,
        )
    out = out or Path("reports") / f"compare-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    html_path, md_path = write_compare(comp, out)
    for m in comp.mismatches:
        console.print(f"not matched ({m.side}): {m.describe()}", highlight=False, markup=False)
    console.print(comp.verdict_line(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"compare: {html_path}\nmarkdown: {md_path}", highlight=False, markup=False)


def gate(
    baseline: Annotated[
        str, typer.Option("--baseline", help="baseline file, name under --baselines, or run folder")
    ],
    run: Annotated[list[Path], typer.Option("--run", help="run folder; repeat the option to pool repeats")],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="gate policy YAML (default: shipped)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for gate.md/.xml/.json (default RUN/gate)")
    ] = None,
    allow_env_mismatch: Annotated[
        bool, typer.Option("--allow-env-mismatch", help="compare across GPU/CPU/backend builds")
    ] = False,
    inconclusive_passes: Annotated[
        bool, typer.Option("--inconclusive-passes", help="exit 0 instead of 3 on inconclusive")
    ] = False,
    match: Annotated[str, typer.Option("--match", help=MATCH_HELP)] = "identity",
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help=ALLOW_INCOMPLETE_HELP)] = False,
    baselines: Annotated[Path, typer.Option("--baselines", help=BASELINES_HELP)] = BASELINE_DIR,
) -> None:
    """Judge a run against a baseline with a noise-aware policy; exit 0 pass, 1 regression, 2 bad input, 3 inconclusive."""
    from harness.gate.baseline import fingerprint, fingerprint_diff
    from harness.gate.match import match_runs
    from harness.gate.outputs import short_verdict, to_json_text, to_junit, to_markdown
    from harness.gate.policy import load_policy
    from harness.gate.verdict import evaluate

    console = Console()
    by = _match_by(console, match)
    try:
        pol = load_policy(policy)
        base = rekey(_load_side(baseline, allow_incomplete, baselines), by)
        current = rekey(_load_runs(run, allow_incomplete), by)
    except (GateInputError, PolicyError) as err:
        raise _bad(console, str(err)) from None
    if inconclusive_passes:
        pol = pol.model_copy(update={"inconclusive_fails": False})
    diffs = fingerprint_diff(fingerprint(base.env), fingerprint(current.env))
    if diffs and not allow_env_mismatch:
        raise _bad(
            console,
            "environment differs from the baseline; refusing to compare "
            "(pass --allow-env-mismatch to compare anyway):\n  " + "\n  ".join(diffs),
        )
    matching = match_runs(base, current)
    if not matching.pairs:
        raise _no_match(
            console,
            "no configuration (cell identity + step) of the run is in the baseline",
            matching.mismatches,
            [base, current],
            by,
        )
    result = evaluate(matching, pol, base.label, current.label, current.scenario)
    result.env_diff = diffs
    result.notes = base.notes + current.notes
    out = out or run[0] / "gate"
    md = to_markdown(result)
    write_text(out / "gate.md", md)
    write_text(out / "gate.junit.xml", to_junit(result))
    write_text(out / "gate.json", to_json_text(result))
    for line in short_verdict(result):  # the full Markdown is gate.md (a PR comment), not the log
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"gate: {result.verdict} (exit {result.exit_code}); outputs in {out} (gate.md, gate.junit.xml, gate.json)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(result.exit_code)


def baseline_save(
    run: Annotated[list[Path], typer.Argument(help="run folder(s); several are stored as repeats")],
    name: Annotated[str, typer.Option("--name", help="baseline name → BASELINES/NAME.json")],
    out_dir: Annotated[
        Path, typer.Option("--baselines", "--dir", help="folder that receives the baseline")
    ] = BASELINE_DIR,
    max_requests: Annotated[int, typer.Option(help="per-request samples kept per step and repeat")] = 2000,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help=ALLOW_INCOMPLETE_HELP)] = False,
) -> None:
    """Write a compact baseline (summaries, samples, scenario, environment). Commits nothing."""
    from harness.gate.baseline import DEFAULT_MAX_ITL, baseline_path, save_baseline

    console = Console()
    if max_requests < 50:
        raise _bad(console, f"--max-requests {max_requests}: keep at least 50 per step")
    try:
        path = baseline_path(name, out_dir)
        data = _load_runs(
            run, allow_incomplete, max_requests=max_requests, max_itl=max(DEFAULT_MAX_ITL, 2 * max_requests)
        )
        save_baseline(data, name, path)
    except GateInputError as err:
        raise _bad(console, str(err)) from None
    for note in data.notes:
        console.print(f"warning: {note}", highlight=False, markup=False)
    size_kb = path.stat().st_size / 1024
    console.print(
        f"baseline: {path} ({size_kb:.0f} KiB, {len(data.steps)} steps); commit it to use it in CI",
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``compare``, ``gate`` and ``baseline save`` to the ``tokenbench`` app."""
    app.command("compare")(compare)
    app.command("gate")(gate)
    baseline_app = typer.Typer(help="Manage regression baselines.", no_args_is_help=True)
    baseline_app.command("save")(baseline_save)
    app.add_typer(baseline_app, name="baseline")
