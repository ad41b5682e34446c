"""What the gate and ``compare`` read: a run folder or a baseline, in one in-memory shape.

Why one shape: ``gate`` compares a baseline with a run, ``compare`` compares
any runs (and a baseline is a valid "run" there too), so both sides load
into ``GateRun``. Several run folders of the same scenario can be merged
into one ``GateRun`` whose steps then have several repeats; that is how
``repeats`` reach the statistics (two-stage bootstrap).

Bad input is never silently tolerated: a missing folder, a summary with
another schema version, a file that is not text or is truncated, a run with
no records, or a run where every request failed raises ``GateInputError``
(the CLI maps it to exit code 2).

An interrupted or unfinished run is refused too, unless the caller allows
it (``--allow-incomplete``): a killed run's last step is cut short and its
cell may be marked failed only because the harness stopped, so judging it
as a whole would either pass it on partial data or call the kill a
regression. When allowed, what the run did finish is used, unreadable
per-step record files are skipped, and each concession is kept in
``GateRun.notes`` for the outputs to show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.gate.samples import FileStepItl, StepSamples, extract_samples
from harness.records import RECORD_SCHEMA
from harness.redact import scrub
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
    notes: list[str] = field(default_factory=list)  # what was conceded to load it (incomplete runs)

    @property
    def repeats(self) -> int:
        return max((len(g.repeats) for g in self.steps.values()), default=0)

    def slo(self) -> Slo | None:
        data = (self.scenario or {}).get("slo")
        try:
            return Slo.model_validate(data) if data else None
        except ValidationError:
            return None


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON, or a ``GateInputError`` naming the file for anything unreadable (binary, truncated)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise GateInputError(
            f"{path}: {what} is not UTF-8 text (binary or corrupted?): {err.reason}"
        ) from None
    except OSError as err:
        raise GateInputError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise GateInputError(f"{path}: {what} is not valid JSON: {err}") from None


def read_summary(path: Path) -> RunSummary:
    if not path.is_file():
        raise GateInputError(f"{path.parent}: not a run folder (no summary.json)")
    raw = read_json(path, "summary")
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise GateInputError(
            f"{path}: schema_version is {version!r}, this tokenbench reads {SCHEMA_VERSION}; "
            "re-run the benchmark or use a matching tokenbench version"
        )
    try:
        return RunSummary.model_validate(scrub(raw))  # secret shapes, should an old run folder hold any
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GateInputError(f"{path}: invalid summary at {where}: {first['msg']}") from None


def _read_env(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, "environment file")
    return data if isinstance(data, dict) else {}


def _read_scenario(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_yaml(path, GateInputError, "scenario file")
    except UnicodeDecodeError as err:
        raise GateInputError(
            f"{path}: scenario file is not UTF-8 text (binary or corrupted?): {err.reason}"
        ) from None
    except RecursionError:
        raise GateInputError(f"{path}: scenario file nests too deeply to read") from None
    return data if isinstance(data, dict) else None


# Everything but the chunk stamps, which are read a step at a time (``samples.FileStepItl``).
FRAME_COLUMNS = [n for n in RECORD_SCHEMA.names if n != "chunk_times_ns"]


def _records_file(path: Path) -> Any:
    from harness.records import read_records_frame

    try:
        return read_records_frame(path, FRAME_COLUMNS)
    except Exception as err:  # pyarrow raises several types for a damaged or truncated file
        raise GateInputError(f"{path}: cannot read records ({type(err).__name__}: {err})") from None


def _read_records(run_dir: Path, allow_incomplete: bool, notes: list[str]) -> tuple[Any, list[Path]]:
    """The run's records without chunk stamps, and the files that hold them."""
    import pandas as pd

    path = run_dir / "records.parquet"
    if path.is_file():
        return _records_file(path), [path]
    steps = sorted(run_dir.glob("cells/*/steps/*/records.parquet"))
    if not steps:
        raise GateInputError(f"{run_dir}: run has no records (no records.parquet)")
    frames, used = [], []
    for p in steps:
        try:
            frames.append(_records_file(p))
            used.append(p)
        except GateInputError as err:
            if not allow_incomplete:
                raise GateInputError(
                    f"{err} — the run was probably killed mid-step; pass --allow-incomplete to use the other steps"
                ) from None
            notes.append(f"skipped unreadable {p.relative_to(run_dir)}")
    if not frames:
        raise GateInputError(f"{run_dir}: no readable records in any step")
    return pd.concat(frames, ignore_index=True), used


def _interrupted(cell: CellResult) -> bool:
    """A cell stopped by the harness's own interruption, not by a failure of the server under test."""
    return cell.status not in ("ok", "failed") or (cell.status == "failed" and cell.error == "interrupted")


def incompleteness(summary: RunSummary) -> list[str]:
    """Why a run cannot be judged as a whole; empty for a finished run."""
    why: list[str] = []
    if summary.interrupted:
        why.append("the run was interrupted")
    elif not summary.complete:
        why.append("the run did not finish (summary.complete is false: killed or still running)")
    cut = [c.cell_id for c in summary.cells if _interrupted(c)]
    if cut:
        why.append(f"cells not finished: {', '.join(cut)}")
    return why


def load_run_folder(
    run_dir: Path,
    max_requests: int | None = None,
    max_itl: int | None = None,
    repeat: str | None = None,
    allow_incomplete: bool = False,
) -> GateRun:
    """Load one run folder; cells sharing an identity inside it count as repeats."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise GateInputError(f"{run_dir}: no such run folder")
    summary = read_summary(run_dir / "summary.json")
    why = incompleteness(summary)
    if why and not allow_incomplete:
        raise GateInputError(
            f"{run_dir}: incomplete run ({'; '.join(why)}); refusing to judge it. Re-run it, or pass "
            "--allow-incomplete to use only the steps it finished"
        )
    notes = [f"{run_dir.name}: incomplete run used (--allow-incomplete): {'; '.join(why)}"] if why else []
    scenario = _read_scenario(run_dir / "scenario.yaml")
    records, record_files = _read_records(run_dir, allow_incomplete, notes)
    if records.empty:
        raise GateInputError(f"{run_dir}: run has no records (records.parquet is empty)")
    run = GateRun(run_dir.name, [run_dir], "run", summary, _read_env(run_dir / "env.json"), scenario)
    run.notes = notes
    slo = run.slo()
    by_cell: dict[Key, tuple[str, StepMetrics]] = {}
    for cell in summary.cells:
        if cell.status == "failed" and not _interrupted(cell):
            run.failed_cells.setdefault(cell.identity, cell)
        for step in cell.steps:
            by_cell[(cell.cell_id, step.step_id)] = (cell.identity, step)
            group = run.steps.setdefault(
                (cell.identity, step.step_id), StepGroup((cell.identity, step.step_id), cell, step)
            )
            note_limited(group, f"{run_dir.name}/{cell.cell_id}", step)
    tag = repeat or run_dir.name
    for s in extract_samples(records, by_cell, slo, tag, max_requests, max_itl, FileStepItl(record_files)):
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
        notes=[n for r in runs for n in r.notes],
    )
    for run in runs:
        for key, group in run.steps.items():
            target = merged.steps.setdefault(key, StepGroup(key, group.cell, group.metrics))
            target.repeats.extend(group.repeats)
            target.limited.extend(group.limited)
        for ident, cell in run.failed_cells.items():
            merged.failed_cells.setdefault(ident, cell)
    return merged
