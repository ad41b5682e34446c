"""What the gate and ``compare`` read: a run folder or a baseline, in one in-memory shape.

Why one shape: ``gate`` compares a baseline with a run, ``compare`` compares
any runs (and a baseline is a valid "run" there too), so both sides load
into ``GateRun``. Several run folders of the same scenario can be merged
into one ``GateRun`` whose steps then have several repeats; that is how
``repeats`` reach the statistics (two-stage bootstrap).

Bad input is never silently tolerated: a missing folder, a summary with
another schema version, a run with no records, or a run where every request
failed raises ``GateInputError`` (the CLI maps it to exit code 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.gate.samples import StepSamples, extract_samples
from harness.results import SCHEMA_VERSION, CellResult, RunSummary, StepMetrics
from harness.scenario import Slo
from harness.yamlfile import read_yaml

Key = tuple[str, str]  # (cell identity, step_id)


class GateInputError(ValueError):
    """Input the gate cannot judge. The message names the file and what is wrong with it."""


@dataclass
class StepGroup:
    """Everything known about one (identity, step_id): its summary metrics and per-repeat samples."""

    key: Key
    cell: CellResult
    metrics: StepMetrics
    repeats: list[StepSamples] = field(default_factory=list)
    limited: list[str] = field(default_factory=list)  # harness-limited repeats: "repeat: reasons"

    @property
    def n_total(self) -> int:
        return sum(r.n_total for r in self.repeats)

    @property
    def n_ok(self) -> int:
        return sum(r.n_ok for r in self.repeats)


@dataclass
class GateRun:
    """One side of a comparison."""

    label: str
    sources: list[Path]
    kind: str  # "run" | "baseline"
    summary: RunSummary
    env: dict[str, Any]
    scenario: dict[str, Any] | None
    steps: dict[Key, StepGroup] = field(default_factory=dict)
    failed_cells: dict[str, CellResult] = field(default_factory=dict)  # identity → failed cell

    @property
    def repeats(self) -> int:
        return max((len(g.repeats) for g in self.steps.values()), default=0)

    def slo(self) -> Slo | None:
        data = (self.scenario or {}).get("slo")
        try:
            return Slo.model_validate(data) if data else None
        except ValidationError:
            return None


def read_summary(path: Path) -> RunSummary:
    if not path.is_file():
        raise GateInputError(f"{path.parent}: not a run folder (no summary.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GateInputError(f"{path}: not valid JSON: {err}") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise GateInputError(
            f"{path}: schema_version is {version!r}, this tokenbench reads {SCHEMA_VERSION}; "
            "re-run the benchmark or use a matching tokenbench version"
        )
    try:
        return RunSummary.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GateInputError(f"{path}: invalid summary at {where}: {first['msg']}") from None


def _read_env(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GateInputError(f"{path}: not valid JSON: {err}") from None
    return data if isinstance(data, dict) else {}


def _read_scenario(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = read_yaml(path, GateInputError, "scenario file")
    return data if isinstance(data, dict) else None


def _read_records(run_dir: Path) -> Any:
    import pandas as pd

    from harness.records import read_records

    path = run_dir / "records.parquet"
    if not path.is_file():
        steps = sorted(run_dir.glob("cells/*/steps/*/records.parquet"))
        if not steps:
            raise GateInputError(f"{run_dir}: run has no records (no records.parquet)")
        return pd.concat([read_records(p).to_pandas() for p in steps], ignore_index=True)
    try:
        return read_records(path).to_pandas()
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise GateInputError(f"{path}: cannot read records: {err}") from None


def load_run_folder(
    run_dir: Path, max_requests: int | None = None, max_itl: int | None = None, repeat: str | None = None
) -> GateRun:
    """Load one run folder; cells sharing an identity inside it count as repeats."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise GateInputError(f"{run_dir}: no such run folder")
    summary = read_summary(run_dir / "summary.json")
    scenario = _read_scenario(run_dir / "scenario.yaml")
    records = _read_records(run_dir)
    if records.empty:
        raise GateInputError(f"{run_dir}: run has no records (records.parquet is empty)")
    run = GateRun(run_dir.name, [run_dir], "run", summary, _read_env(run_dir / "env.json"), scenario)
    slo = run.slo()
    by_cell: dict[Key, tuple[str, StepMetrics]] = {}
    for cell in summary.cells:
        if cell.status == "failed":
            run.failed_cells.setdefault(cell.identity, cell)
        for step in cell.steps:
            by_cell[(cell.cell_id, step.step_id)] = (cell.identity, step)
            group = run.steps.setdefault(
                (cell.identity, step.step_id), StepGroup((cell.identity, step.step_id), cell, step)
            )
            note_limited(group, f"{run_dir.name}/{cell.cell_id}", step)
    tag = repeat or run_dir.name
    for s in extract_samples(records, by_cell, slo, tag, max_requests, max_itl):
        run.steps[(s.identity, s.step_id)].repeats.append(s)
    for key in [k for k, g in run.steps.items() if not g.repeats]:
        del run.steps[key]
    _check_usable(run, run_dir)
    return run


def note_limited(group: StepGroup, where: str, step: StepMetrics) -> None:
    """Remember a harness-limited step: the client, not the server, set its numbers."""
    if step.harness.limited:
        group.limited.append(f"{where}: {'; '.join(step.harness.reasons) or 'harness-limited'}")


def _check_usable(run: GateRun, where: Path) -> None:
    if not run.steps:
        raise GateInputError(f"{where}: run has no measured requests in any step")
    if all(g.n_ok == 0 for g in run.steps.values()):
        total = sum(g.n_total for g in run.steps.values())
        raise GateInputError(f"{where}: every request failed ({total} of {total}); nothing to compare")


def merge_repeats(runs: list[GateRun]) -> GateRun:
    """Treat several runs of the same scenario as repeats of one run."""
    if not runs:
        raise GateInputError("no runs given")
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    merged = GateRun(
        label=f"{first.label} (+{len(runs) - 1} repeats)",
        sources=[p for r in runs for p in r.sources],
        kind=first.kind,
        summary=first.summary,
        env=first.env,
        scenario=first.scenario,
        failed_cells=dict(first.failed_cells),
    )
    for run in runs:
        for key, group in run.steps.items():
            target = merged.steps.setdefault(key, StepGroup(key, group.cell, group.metrics))
            target.repeats.extend(group.repeats)
            target.limited.extend(group.limited)
        for ident, cell in run.failed_cells.items():
            merged.failed_cells.setdefault(ident, cell)
    return merged
