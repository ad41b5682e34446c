"""Loading a run folder into memory for the report.

Why tolerant: a run that crashed or was interrupted is exactly the run whose
report someone needs to read. Every optional file may be missing; what is
missing is collected in ``RunData.problems`` and shown as an "incomplete"
banner instead of aborting. Files that exist but are malformed are bad input
and raise ``ReportError`` naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import ValidationError

from harness.gate.samples import FileStepItl
from harness.lengths import length_flags
from harness.metrics import per_request_frame
from harness.records import RECORD_SCHEMA, read_records_frame, table_to_frame
from harness.redact import scrub, scrub_text
from harness.results import CellResult, RunSummary
from harness.telemetry.summary import measurement_note

FRAME_COLUMNS = [n for n in RECORD_SCHEMA.names if n != "chunk_times_ns"]  # stamps: read per step
TIMESERIES_COLUMNS: tuple[str, ...] = ("cell_id", "step_id", "t_ns", "source", "name", "value", "labels")


class ReportError(ValueError):
    """A run folder the report cannot read. The message names the file and field."""


@dataclass
class RunData:
    """Everything the report shows, read once from a run folder."""

    run_dir: Path
    summary: RunSummary
    records: pd.DataFrame
    timeseries: pd.DataFrame
    scenario_text: str | None
    env: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    memo: dict[str, Any] = field(default_factory=dict)  # what the renderers computed from records, once

    @property
    def incomplete(self) -> bool:
        return bool(self.problems)

    @property
    def simulated_cells(self) -> set[str]:
        """Cells whose numbers come from a simulator, by the summary or by the records themselves."""
        cells = {c.cell_id for c in self.summary.cells if c.simulated}
        if not self.records.empty and "simulated" in self.records:
            mask = self.records["simulated"].fillna(False).astype(bool).to_numpy()
            # only the cell column is filtered: a filter of the whole frame copied every column, each call
            cells |= set(self.records["cell_id"].to_numpy()[mask])
        return cells

    @property
    def cell_ids(self) -> list[str]:
        """Cells in summary order, then any that only appear in the raw data."""
        ids = [c.cell_id for c in self.summary.cells]
        for frame in (self.records, self.timeseries):
            if not frame.empty:
                for cid in frame["cell_id"].dropna().unique():
                    if cid not in ids:
                        ids.append(str(cid))
        return ids

    def itl_source(self) -> FileStepItl | None:
        """Where the headline reads each step's chunk stamps (the frame holds none); None: no records file."""
        path = self.run_dir / "records.parquet"
        return FileStepItl([path]) if path.is_file() else None

    def cell(self, cell_id: str) -> CellResult | None:
        return next((c for c in self.summary.cells if c.cell_id == cell_id), None)


def _validation_message(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid run summary"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top>"
        lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r:.80})")
    return "\n".join(lines)


def _read_summary(path: Path, run_dir: Path, problems: list[str]) -> RunSummary:
    if not path.exists():
        problems.append("summary.json is missing: metric tables are empty; figures use raw records only")
        return RunSummary(
            run_id=run_dir.name, scenario="unknown", started_at="unknown", harness_version="unknown"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunSummary.model_validate(scrub(data))  # secret shapes, should an old run folder hold any
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from None
    except ValidationError as err:
        raise ReportError(_validation_message(path, err)) from None


def _read_records(path: Path, problems: list[str]) -> pd.DataFrame:
    if not path.exists():
        problems.append("records.parquet is missing: no per-request data (CDFs are empty)")
        return table_to_frame(RECORD_SCHEMA.empty_table().select(FRAME_COLUMNS))
    try:
        # Without the chunk stamps (most of a large run's bytes): the headline reads them a step at a
        # time (``itl_source``), the exports stream them; other list columns stay Arrow-backed.
        return read_records_frame(path, FRAME_COLUMNS)
    except (pa.ArrowException, OSError) as err:
        raise ReportError(f"{path}: not a readable records file: {err}") from None


def _read_timeseries(path: Path, problems: list[str]) -> pd.DataFrame:
    empty = pd.DataFrame(
        {c: pd.Series(dtype="float64" if c == "value" else "object") for c in TIMESERIES_COLUMNS}
    )
    if not path.exists():
        problems.append("timeseries.parquet is missing: no memory or server-metric timelines")
        return empty
    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ReportError(f"{path}: not a readable timeseries file: {err}") from None
    missing = [c for c in ("cell_id", "t_ns", "source", "name", "value") if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: timeseries lacks column(s) {missing}")
    for col in TIMESERIES_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    return frame


def _read_env(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _summary_problems(summary: RunSummary) -> list[str]:
    problems: list[str] = []
    if summary.interrupted:
        problems.append("the run was interrupted")
    if not summary.complete:
        problems.append("the run did not finish (summary.complete is false)")
    pending = [c.cell_id for c in summary.cells if c.status == "pending"]
    if pending:
        problems.append(f"cells never measured: {', '.join(pending)}")
    return problems


def load_run(run_dir: Path | str) -> RunData:
    """Read a run folder; missing optional files become ``problems``, malformed ones raise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder")
    problems: list[str] = []
    summary = _read_summary(run_dir / "summary.json", run_dir, problems)
    if (run_dir / "summary.json").exists():
        problems.extend(_summary_problems(summary))
    records = _read_records(run_dir / "records.parquet", problems)
    timeseries = _read_timeseries(run_dir / "timeseries.parquet", problems)
    scenario_path = run_dir / "scenario.yaml"
    scenario_text = scrub_text(scenario_path.read_text(encoding="utf-8")) if scenario_path.exists() else None
    return RunData(
        run_dir=run_dir,
        summary=summary,
        records=records,
        timeseries=timeseries,
        scenario_text=scenario_text,
        env=_read_env(run_dir / "env.json"),
        problems=problems,
    )


def per_request(records: pd.DataFrame) -> pd.DataFrame:
    """Per-request latencies (ms) of measured (non-warm-up), successful requests.

    Delegates to ``harness.metrics.per_request_frame`` so the CDFs and the
    summary share one definition (latency from the scheduled send time).
    """
    frame = per_request_frame(records)
    return frame[frame["ok"] & ~frame["warmup"]].reset_index(drop=True)


def run_origin_ns(run: RunData) -> int | None:
    """The run's first sample: time zero for every timeline, so plots share one axis."""
    starts: list[float] = []
    if not run.timeseries.empty:
        starts.append(float(pd.to_numeric(run.timeseries["t_ns"]).min()))
    if not run.records.empty:
        starts.append(float(run.records["scheduled_ns"].min()))
    starts = [s for s in starts if np.isfinite(s)]
    return int(min(starts)) if starts else None


def step_windows(run: RunData) -> pd.DataFrame:
    """When each (cell, step) ran, in ns: from the records, else from step-tagged samples."""
    if not run.records.empty:
        grouped = run.records.groupby(["cell_id", "step_id"], sort=False)
        frame = grouped.agg(start_ns=("scheduled_ns", "min"), end_ns=("end_ns", "max")).reset_index()
        return frame
    ts = run.timeseries.dropna(subset=["step_id"])
    if ts.empty:
        return pd.DataFrame(columns=["cell_id", "step_id", "start_ns", "end_ns"])
    grouped = ts.groupby(["cell_id", "step_id"], sort=False)
    return grouped.agg(start_ns=("t_ns", "min"), end_ns=("t_ns", "max")).reset_index()


def cap_notes(run: RunData) -> list[str]:
    """One line per step that asked for more concurrency than its server serves at once.

    Why say it: a Caikit runtime left at its default thread pool (5) serves at
    most 5 streams; a step at concurrency 8 then measures the pool's queue, not
    the engine, and its latencies must not be read as the server's.
    """
    notes: list[str] = []
    for cell in run.summary.cells:
        over = [s.step_id for s in cell.steps if s.exceeds_concurrency_cap]
        if over and cell.concurrency_cap is not None:
            notes.append(
                f"{cell.cell_id}: step(s) {', '.join(over)} exceed the server's concurrency cap of "
                f"{cell.concurrency_cap} ({cell.concurrency_cap_setting}); requests above it queue in the server"
            )
    return notes


def not_here(run: RunData) -> list[str]:
    """Cells whose server was not on this host: no host RSS or NVML figure of theirs exists."""
    return [c.cell_id for c in run.summary.cells if not c.memory.measured_here]


def memory_notes(run: RunData) -> list[str]:
    """``cell: where its memory figures come from`` for every cell not measured on this host."""
    notes = [(c.cell_id, measurement_note(c.memory)) for c in run.summary.cells]
    return [f"{cid}: {note}" for cid, note in notes if note]


def length_notes(run: RunData) -> list[str]:
    """One line per cell whose achieved mean output length is more than 5 % off the others' median.

    Recomputed from the steps (``harness/lengths.py``), so a summary written before the run
    finished, or by an older harness, is flagged the same way.
    """
    return [f"{cell_id}: {why}" for cell_id, why in length_flags(run.summary.cells).items()]
