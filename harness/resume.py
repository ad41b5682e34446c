"""``tokenbench run --resume RUN_DIR``: the earlier attempt's scenario, secrets and summary, ready to go on.

Why apart from ``run``: resuming has its own rules. The run folder's
``scenario.yaml`` was written with its secrets replaced by ``REDACTED``
(``harness.runsecrets``), so it is not the scenario that ran until they are
given again: a redacted ``env`` value from the variable of the same name in
the environment, anything else from ``--set``. A secret that is still missing
is an error naming the field and how to give it, never a request sent with
the literal ``REDACTED``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harness.matrix import Cell
from harness.owner import owner_alive
from harness.redact import REDACTED
from harness.results import CellResult, RunSummary
from harness.rundir import RunDir
from harness.scenario import Scenario, ScenarioError, load_scenario


def load_resume_scenario(
    run_dir: Path, overrides: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> Scenario:
    """The run folder's scenario with ``overrides`` applied and its redacted secrets given back."""
    environ = os.environ if environ is None else environ
    path = run_dir / "scenario.yaml"
    scenario = load_scenario(path, overrides or [])
    problems: list[str] = []
    for i, server in enumerate(scenario.servers):
        for key, value in server.env.items():
            if value == REDACTED:
                if environ.get(key):
                    server.env[key] = environ[key]
                else:
                    problems.append(
                        f"servers[{i}].env.{key}: redacted in the run folder; export {key} "
                        f"or give --set servers.{i}.env.{key}=VALUE"
                    )
        if server.api_key_env and not environ.get(server.api_key_env):
            problems.append(
                f"servers[{i}].api_key_env: environment variable {server.api_key_env} is not set (or empty)"
            )
    problems += [
        f"{where}: redacted in the run folder; give it again with --set {hint}=VALUE"
        for where, hint in _redacted_fields(scenario.model_dump(mode="json", exclude_none=True))
        if not where.startswith("servers") or ".env." not in where  # env: reported above
    ]
    if problems:
        raise ScenarioError(f"{path}: cannot resume: a secret is missing\n  " + "\n  ".join(problems))
    return scenario


def _redacted_fields(data: Any, where: str = "", hint: str = "") -> Iterator[tuple[str, str]]:
    """(field path, ``--set`` path) of every string that still holds the ``REDACTED`` mark."""
    if isinstance(data, str):
        if REDACTED in data:
            yield where, hint
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _redacted_fields(
                value, f"{where}.{key}" if where else key, f"{hint}.{key}" if hint else key
            )
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _redacted_fields(value, f"{where}[{i}]", f"{hint}.{i}")


def launch_groups(cells: list[Cell], results: list[CellResult]) -> Iterator[list[tuple[Cell, CellResult]]]:
    """Consecutive unfinished cells that share a ``launch_key``, each group to be served by one launch.

    Cells finished in an earlier attempt (``--resume``) are skipped, so a resumed group launches
    its server again only for the cells still to measure.
    """
    group: list[tuple[Cell, CellResult]] = []
    for cell, result in zip(cells, results, strict=True):
        if result.status in ("ok", "failed"):
            continue
        if group and not (cell.launch_key and cell.launch_key == group[-1][0].launch_key):
            yield group
            group = []
        group.append((cell, result))
    if group:
        yield group


def resumable_summary(run_dir: RunDir, cells: list[Cell]) -> RunSummary:
    """The earlier attempt's summary, ready to go on: same cells, unfinished ones set back to pending.

    Refuses (``ScenarioError``) a run that finished, one whose harness is still
    running, and one whose cells are not the scenario's (another scenario, or
    an edited one: the kept steps would not be comparable).
    """
    where = str(run_dir.path)
    try:
        summary = run_dir.read_summary()
    except (OSError, ValueError) as err:
        raise ScenarioError(f"{where}: cannot resume: summary.json unreadable: {err}") from None
    if summary.complete:
        raise ScenarioError(f"{where}: cannot resume: the run finished; nothing is left to run")
    if summary.owner and owner_alive(summary.owner) and not summary.interrupted:
        raise ScenarioError(
            f"{where}: cannot resume: its harness (pid {summary.owner.split(':')[0]}) still runs"
        )
    stored = [(c.cell_id, c.identity) for c in summary.cells]
    wanted = [(c.cell_id, c.identity) for c in cells]
    if stored != wanted:
        raise ScenarioError(
            f"{where}: cannot resume: its cells {[i for i, _ in stored]} are not this scenario's "
            f"{[i for i, _ in wanted]} (was the scenario edited?)"
        )
    summary.complete = summary.interrupted = False
    summary.resumes += 1
    for cell in summary.cells:
        if cell.status in ("running", "interrupted", "pending"):
            cell.status, cell.error, cell.log_tail = "pending", None, []
    return summary
