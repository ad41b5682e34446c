"""The run: scenario → servers → load → records → metrics → report.

This module only sequences the pieces; each piece lives in its own module
(measuring one cell on a started server: ``harness.cellrun``).
Its job is the part nobody else can own: the order of operations and what
happens when something goes wrong. The rules it enforces:

* everything that can be validated is validated before a server starts;
* a cell whose server fails to start (or whose load crashes) is marked failed
  with its log tail, and the run goes on to the next cell;
* after every step, ``summary.json`` is rewritten, so Ctrl-C or a crash keeps
  every finished step and the run is marked incomplete;
* every process the harness started is gone when ``run`` returns or raises.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from harness import __version__
from harness.assets import check_local_model, prepare_backends, resolve_scenario
from harness.atomic import write_json, write_text
from harness.backends.leftovers import stop_leftovers
from harness.backends.process import ProcessRegistry
from harness.backends.registry import get_spec
from harness.bounds import MAX_CELL_ID
from harness.cellrun import CellRun
from harness.kvfit import kv_fit_warnings
from harness.lengths import apply_length_flags
from harness.matrix import Cell, expand_cells, expand_steps, matrix_problems
from harness.owner import owner_marker
from harness.placement import resolve_placement
from harness.progress import LiveProgress
from harness.results import CellResult, RunSummary
from harness.resume import launch_groups, resumable_summary
from harness.rundir import RunDir, collect_env
from harness.runsecrets import Redactor
from harness.scenario import Scenario, ScenarioError
from harness.search import search_problems
from harness.wallclock import read_clock_anchor
from harness.yamlfile import shown

Progress = Callable[[str], None]


class RunInterrupted(Exception):
    """Raised when the user (Ctrl-C) or the system (SIGTERM) stops a run."""


@dataclass
class RunOutcome:
    run_dir: RunDir
    summary: RunSummary
    report_path: Path | None = None
    failed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.summary.interrupted:
            return 130
        return 1 if self.failed else 0


def validate_cells(scenario: Scenario) -> list[Cell]:
    """Expand and check every cell against its backend before anything starts."""
    from harness.backends.registry import validate_settings
    from harness.placement import placement_problems
    from harness.telemetry.config import telemetry_problems

    where = f"{scenario.source}: invalid scenario\n  "
    too_big = matrix_problems(scenario)
    if too_big:
        raise ScenarioError(where + "\n  ".join(too_big))
    cells = expand_cells(scenario)
    problems: list[str] = [p for server in scenario.servers for p in check_local_model(server)]
    problems += search_problems(scenario.workload.steps.search, scenario.slo, scenario.workload.duration_s)
    for cell in cells:  # each message names server, cell, field and value; rules of a server, once
        problems += [p for p in validate_settings(cell) if p not in problems]
    ids = [c.cell_id for c in cells]
    problems += [f"cell id '{i}' appears twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    problems += [
        f"cell id {shown(i)} is {len(i)} characters; at most {MAX_CELL_ID} (it names a folder)"
        for i in ids
        if len(i) > MAX_CELL_ID
    ]
    problems += telemetry_problems(scenario)
    problems += placement_problems(scenario.placement)
    if problems:
        raise ScenarioError(where + "\n  ".join(problems))
    return cells


def _cap_fields(cell: Cell) -> dict[str, object]:
    """``concurrency_cap``/``concurrency_cap_setting`` of a cell whose backend limits concurrent streams."""
    cap = get_spec(cell.server.backend).concurrency_cap(dict(cell.settings))
    return {} if cap is None else {"concurrency_cap": cap.limit, "concurrency_cap_setting": cap.setting}


@contextmanager
def _signals_raise_interrupt() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt so every ``finally`` tears down servers.

    SIGINT is set explicitly because a process started in the background by a
    non-interactive shell (CI scripts, ``cmd &``) inherits SIGINT as *ignored*,
    and Python then never raises KeyboardInterrupt: Ctrl-C or ``kill -INT``
    would do nothing and the servers would run on.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Run:
    """One execution of a scenario. Create, then call :meth:`execute` once.

    With ``resume`` (an earlier run folder of the same scenario), cells that
    finished (ok or failed) are kept, and every other cell runs from its first
    unfinished step, with a fresh server launch, into the same folder.

    ``secrets`` (default: collected from the scenario and the environment) is
    scrubbed from every file, log, record and progress line the run writes.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        out_root: Path,
        home: Path,
        progress: Progress,
        resume: RunDir | None = None,
        secrets: Redactor | None = None,
        live: LiveProgress | None = None,
    ) -> None:
        self.scenario = scenario
        self.live = live or LiveProgress()  # the display while a step runs (default: none)
        self.home = home
        self.secrets = secrets or Redactor.for_scenario(scenario)
        self.progress: Progress = lambda message: progress(self.secrets.text(message))
        self.cells = validate_cells(scenario)
        self.steps = expand_steps(scenario)
        self.placement = resolve_placement(scenario.placement)
        if resume is not None:
            self.run_dir = dataclasses.replace(resume, secrets=self.secrets)
            self.summary = resumable_summary(self.run_dir, self.cells)
            return
        self.run_dir = RunDir.create(out_root, scenario.name, secrets=self.secrets)
        self.summary = RunSummary(
            run_id=self.run_dir.path.name,
            scenario=scenario.name,
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            harness_version=__version__,
            clock=read_clock_anchor(),
            cells=[
                CellResult(
                    cell_id=c.cell_id,
                    server=c.server.name,
                    backend=c.server.backend,
                    model=c.server.model,
                    settings=dict(c.settings),
                    identity=c.identity,
                    simulated=get_spec(c.server.backend).simulated,
                    **_cap_fields(c),
                )
                for c in self.cells
            ],
        )

    # -- the sequence -------------------------------------------------------------------------
    def execute(self) -> RunOutcome:
        rd = self.run_dir
        if not self.summary.resumes:
            write_text(rd.path / "scenario.yaml", self.secrets.scenario_yaml(self.scenario))
        self.summary.owner = owner_marker()
        rd.write_summary(self.summary)
        outcome = RunOutcome(rd, self.summary)
        registry = ProcessRegistry(scrub=self.secrets.text, placement=self.placement)
        try:
            with _signals_raise_interrupt(), registry:
                self.progress(f"run folder: {rd.path}")
                if self.placement.note:
                    self.progress(f"warning: placement {self.placement.requested}: {self.placement.note}")
                for line in kv_fit_warnings(self.scenario, self.cells):
                    self.progress(f"warning: {line}")
                for line in stop_leftovers():
                    self.progress(f"stopped a process left by an earlier, killed harness: {line}")
                resolved = resolve_scenario(self.scenario, self.home, self.progress)
                prepare_backends(resolved, self.home, self.progress)
                servers = {s.name: s for s in resolved.servers}
                cells = [dataclasses.replace(c, server=servers[c.server.name]) for c in self.cells]
                for cell, result in zip(cells, self.summary.cells, strict=True):
                    if result.status in ("ok", "failed"):
                        self.progress(f"[{cell.cell_id}] kept from the earlier attempt ({result.status})")
                for group in launch_groups(cells, self.summary.cells):
                    self._run_group(group, resolved, registry)
                for cell, result in zip(cells, self.summary.cells, strict=True):
                    if result.status != "ok":
                        outcome.failed.append(cell.cell_id)
            self.summary.complete = True
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self.progress("interrupted: servers stopped, finished steps kept")
        except Exception as err:  # setup (model, backend environment) failed: no cell could run
            for cell in self.summary.cells:
                if cell.status == "pending":
                    cell.status, cell.error = "failed", f"setup failed: {type(err).__name__}: {err}"
                    outcome.failed.append(cell.cell_id)
            self.progress(f"setup failed: {err}")
        finally:
            self._finish(outcome)
        return outcome

    def _finish(self, outcome: RunOutcome) -> None:
        rd = self.run_dir
        self.summary.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        apply_length_flags(self.summary)
        versions = {c.cell_id: c.version for c in self.summary.cells if c.version}
        env = {**collect_env(versions), "placement": self.placement.to_env()}
        write_json(rd.path / "env.json", self.secrets.data(env))
        rd.write_summary(self.summary)
        rd.merge()
        from harness.report.outputs import write_outputs

        try:
            outcome.report_path = write_outputs(rd.path)
        except Exception as err:  # a report bug must not lose the measured data
            self.progress(f"report failed: {err!r}; data kept in {rd.path}")

    # -- one cell -----------------------------------------------------------------------------
    def _run_group(
        self, group: list[tuple[Cell, CellResult]], scenario: Scenario, registry: ProcessRegistry
    ) -> None:
        """Launch one server and measure each of the group's cells on it (usually a group of one).

        A failure of the server (start, death, the load generator) fails every cell of the
        group that had not finished; a cell whose own steps fail (``StepFailed``) fails alone.
        """
        from harness.backends.base import BackendStartError
        from harness.backends.process import tail
        from harness.backends.registry import launch
        from harness.backends.watch import ServerDied
        from harness.load.runner import LoadRunError
        from harness.stepcheck import StepFailed

        first = group[0][0]
        cell_dir = self.run_dir.cell_dir(first.cell_id)
        cell_run = CellRun(
            scenario,
            self.run_dir,
            self.summary,
            self.steps,
            [c.cell_id for c in self.cells],
            registry,
            self.secrets,
            self.progress,
            self.live,
        )
        pending = list(group)
        for _, result in pending:
            result.status, result.error = "running", None
        self.run_dir.write_summary(self.summary)
        self.progress(f"[{first.cell_id}] starting {first.server.backend} server")
        try:
            with launch(first, cell_dir, home=self.home, registry=registry) as handle:
                self.secrets.add_headers(handle.headers)  # a cluster backend's bearer token
                self.progress(f"[{first.cell_id}] healthy in {handle.launch_s or 0:.1f}s ({handle.version})")
                while pending:
                    cell, result = pending[0]
                    try:
                        cell_run.measure(cell, result, handle, first)
                    except StepFailed as err:
                        result.status, result.error = (
                            "failed",
                            f"{err}; the cell's remaining steps were skipped",
                        )
                    pending.pop(0)
        except BackendStartError as err:
            self._fail(pending, f"server failed to start: {err}", list(getattr(err, "log_tail", [])))
        except LoadRunError as err:
            self._fail(pending, f"load generator failed: {err}", list(getattr(err, "log_tail", [])))
        except ServerDied as err:
            self._fail(pending, str(err), tail(cell_dir / "server.log"))
        except KeyboardInterrupt:
            for _, result in pending:
                result.status, result.error = "interrupted", "interrupted by a signal (resumable: --resume)"
            raise
        except Exception as err:  # any other failure of this cell: record it, go on with the next
            self._fail(pending, f"{type(err).__name__}: {err}", [])
        finally:
            for cell, result in group:
                if result.status == "failed":
                    self.progress(f"[{cell.cell_id}] FAILED: {result.error}")
            self.run_dir.write_summary(self.summary)

    @staticmethod
    def _fail(pending: list[tuple[Cell, CellResult]], error: str, log_tail: list[str]) -> None:
        for _, result in pending:
            result.status, result.error, result.log_tail = "failed", error, log_tail
