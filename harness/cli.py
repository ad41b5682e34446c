"""The ``tokenbench`` command line.

Thin by design: each verb parses its arguments, calls one module, and turns
the outcome into an exit code. Exit codes: 0 success, 1 a cell failed (run)
or a regression (gate), 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from harness.scenario import ScenarioError, load_scenario

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark LLM serving backends: launch servers, drive Locust token-streaming load, report.",
)


def _version(value: bool) -> None:
    if value:
        from harness import __version__

        typer.echo(f"tokenbench {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the harness version and exit", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Benchmark LLM serving backends: launch servers, drive Locust token-streaming load, report."""


def _home() -> Path:
    """Where backend environments and generated models are cached: ``TOKENBENCH_HOME`` (``harness.home``)."""
    from harness.home import tokenbench_home

    return tokenbench_home()


def _console() -> Console:
    """A console that stays readable in CI logs: rich assumes 80 columns when output is not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _progress(console: Console) -> Callable[[str], None]:
    """Progress lines printed as given: no rich markup (cell ids look like ``[tags]``), no wrapping."""
    return lambda message: console.print(message, highlight=False, markup=False, soft_wrap=True)


def _fail(console: Console, message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message``; the message is text, never markup (cell ids look like ``[tags]``)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def run(
    scenario: Annotated[
        Path | None, typer.Argument(help="scenario YAML file (omit with --resume)", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="folder that receives the run folder")] = Path("reports"),
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="override a field: path=value (YAML value); with --resume, give back redacted secrets",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="continue an interrupted or killed run in its own folder: finished steps are kept, "
            "unfinished cells restart from their first unfinished step",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no live progress while a step runs (the run's lines stay)")
    ] = False,
    progress_every: Annotated[
        float,
        typer.Option(
            "--progress-every",
            min=0.5,
            help="without a terminal: seconds between the plain progress lines printed while a step runs",
        ),
    ] = 10.0,
) -> None:
    """Run a scenario: start each cell's server, drive every load step, write the report."""
    from harness.progress import LiveProgress
    from harness.report.data import load_run
    from harness.report.terminal import print_summary
    from harness.resume import load_resume_scenario
    from harness.run import Run
    from harness.rundir import RunDir
    from harness.runsecrets import Redactor

    console = _console()
    secrets = Redactor.for_inputs(set_ or [])
    try:
        if resume is not None:
            if scenario is not None:
                raise ScenarioError(
                    "--resume takes the run folder, not a scenario: its scenario.yaml is the scenario"
                )
            if not (resume / "summary.json").is_file():
                raise ScenarioError(f"{resume}: not a run folder (no summary.json)")
            sc = load_resume_scenario(resume, set_ or [])
        else:
            if scenario is None:
                raise ScenarioError("give a scenario file, or --resume RUN_DIR")
            sc = load_scenario(scenario, set_ or [])
        secrets = Redactor.for_scenario(sc, set_ or [])
        runner = Run(
            sc,
            out_root=out,
            home=_home(),
            progress=_progress(console),
            resume=RunDir(resume) if resume is not None else None,
            secrets=secrets,
            live=LiveProgress.for_console(console, quiet=quiet, every_s=progress_every),
        )
    except ScenarioError as err:
        raise _fail(console, secrets.text(str(err))) from None
    outcome = runner.execute()
    if outcome.failed:
        console.print(f"[bold red]failed cells:[/] {escape(', '.join(outcome.failed))}", highlight=False)
    if outcome.summary.interrupted:
        console.print("[yellow]run interrupted: partial results kept, run marked incomplete[/]")
    try:
        print_summary(load_run(outcome.run_dir.path), console, report_path=outcome.report_path)
    except Exception as err:  # the data is on disk; a table bug must not hide the path
        console.print(secrets.text(f"(summary table unavailable: {err!r})"), markup=False)
        console.print(
            f"report: {outcome.report_path or outcome.run_dir.path}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    raise typer.Exit(outcome.exit_code)


@app.command()
def validate(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: path=value")] = None,
) -> None:
    """Check a scenario without starting anything; list the cells and steps it expands to."""
    from harness.matrix import expand_steps
    from harness.run import validate_cells
    from harness.runsecrets import Redactor

    console = _console()
    try:
        sc = load_scenario(scenario, set_ or [])
        cells = validate_cells(sc)
    except ScenarioError as err:
        raise _fail(console, Redactor.for_inputs(set_ or []).text(str(err))) from None
    steps = expand_steps(sc)
    console.print(f"{scenario}: ok — {len(cells)} cells × {len(steps)} steps", highlight=False, markup=False)
    for c in cells:
        # markup=False: a hash like "[be12...]" would otherwise be read as a rich style tag and vanish.
        console.print(f"  cell {c.cell_id}  [{c.identity}]", highlight=False, markup=False)
    console.print("  steps: " + ", ".join(s.step_id for s in steps), highlight=False, markup=False)
    from harness.kvfit import kv_fit_warnings

    for line in kv_fit_warnings(sc, cells):  # estimates: a warning, never a failure
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    if (search := sc.workload.steps.search) is not None:
        console.print(
            f"  then a capacity search: {search.min_rate:g}..{search.max_rate:g} req/s, attainment >= "
            f"{search.target:g}, precision {search.precision:g}, at most {search.max_steps} probes",
            highlight=False,
            markup=False,
        )


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder under reports/")]) -> None:
    """Re-render report.html, summary.md, the CSV exports and the merged Parquet files from a run folder."""
    from harness.report.outputs import write_outputs
    from harness.rundir import RunDir

    console = _console()
    if not (run_dir / "summary.json").is_file():
        raise _fail(console, f"{run_dir}: not a run folder (no summary.json)")
    RunDir(run_dir).merge()
    path = write_outputs(run_dir)
    console.print(f"report: {path}", highlight=False, markup=False)


@app.command("make-model")
def make_model(
    out_dir: Annotated[
        Path | None,
        typer.Argument(help="folder for the tiny model (default: TOKENBENCH_HOME/models/tiny-ARCH)"),
    ] = None,
    arch: Annotated[str, typer.Option(help="architecture: llama or gpt2")] = "llama",
    seed: int = 0,
) -> None:
    """Generate a tiny random-weight model (Llama or GPT-2) and its locally trained tokenizer (cached)."""
    from harness.tinyarch import ARCHITECTURES
    from harness.tinymodel import make_tiny_model

    console = _console()
    if arch not in ARCHITECTURES:
        raise _fail(console, f"unknown architecture {arch!r} (known: {', '.join(sorted(ARCHITECTURES))})")
    from harness.home import models_dir

    path = make_tiny_model(out_dir or models_dir(_home()) / f"tiny-{arch}", architecture=arch, seed=seed)
    console.print(f"model: {path}", highlight=False, markup=False)


@app.command()
def setup(
    names: Annotated[
        list[str] | None, typer.Argument(help="environments to create: vllm-cpu, vllm-gpu, tgis, caikit")
    ] = None,
    for_: Annotated[
        Path | None, typer.Option("--for", help="create the environments this scenario's servers need")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if complete")] = False,
) -> None:
    """Create backend Python environments under TOKENBENCH_HOME/venvs (idempotent; a complete one costs nothing)."""
    from harness.assets import required_environments
    from harness.envs import BackendEnvError, ensure_envs, env_names

    console = _console()
    wanted = list(names or [])
    unknown = [n for n in wanted if n not in env_names()]
    if unknown:
        raise _fail(console, f"unknown backend environment {unknown[0]!r} (known: {', '.join(env_names())})")
    if for_ is not None:
        try:
            wanted += [n for n in required_environments(load_scenario(for_), _home()) if n not in wanted]
        except ScenarioError as err:
            raise _fail(console, str(err)) from None
        if not wanted:
            console.print(f"{for_}: no backend environment needed", highlight=False, markup=False)
    elif not wanted:
        wanted = ["vllm-cpu"]
    try:
        built = ensure_envs(wanted, _home(), _progress(console), force=force)
    except BackendEnvError as err:
        raise _fail(console, str(err), code=1) from None
    for name, path in built.items():
        console.print(f"environment {name}: {path}", highlight=False, markup=False)


@app.command()
def worker(
    master: Annotated[
        str, typer.Option("--master", help="the run's master, HOST:PORT (its workload.distributed.bind)")
    ],
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="serve this many steps, then exit (default: until stopped)"),
    ] = None,
) -> None:
    """Lend this host's cores to a distributed run: a Locust worker per step, plan and token over the wire.

    The shared token comes from TOKENBENCH_WORKER_TOKEN; this host needs no checkout and no scenario.
    """
    from harness.load.worker import MasterAddress, WorkerError, serve

    console = _console()
    try:
        code = serve(MasterAddress.parse(master), steps=steps, log=_progress(console))
    except WorkerError as err:
        raise _fail(console, str(err)) from None
    raise typer.Exit(code)


def _register_plugins() -> None:
    """Sub-commands owned by other modules (simulator, gate) add themselves here."""
    import importlib

    for module in ("harness.sim.command", "harness.gate.commands"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue
            raise
        mod.register(app)


_register_plugins()


def main() -> None:
    app(prog_name="tokenbench")


if __name__ == "__main__":
    sys.exit(main())
