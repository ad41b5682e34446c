"""Tables for other tools: ``records.csv``, ``summary.csv`` and the derived columns of ``records.parquet``.

Why beside the report: spreadsheets, notebooks and dashboards want flat
tables, not a pydantic summary or list-valued Parquet columns. Every number
comes from the same definitions the report uses (``harness.metrics``), so a
CSV and the HTML never disagree.

* ``records.parquet``: the raw per-request stamps (``RECORD_SCHEMA``) plus the
  derived columns ``DERIVED_COLUMNS`` (ok, TTFT, TPOT, E2E and queueing in ms,
  the resolved output token count, and ``start_utc``/``end_utc`` from the
  run's wall-clock anchor). Readers of the raw schema ignore the extra columns.
* ``records.csv``: one row per request, the derived table without list columns.
* ``summary.csv``: one row per cell × step, every ``StepMetrics`` field
  flattened (``ttft_ms_p95``, ``harness_limited``, ``errors`` as JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from harness.atomic import atomic_path
from harness.records import RECORD_SCHEMA, ROW_GROUP_ROWS
from harness.results import ClockAnchor, Dist, HarnessHealth, RunSummary, StepMetrics

DERIVED_COLUMNS: tuple[str, ...] = (
    "ok",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "queue_ms",
    "output_tokens_resolved",
    "start_utc",
    "end_utc",
)
CSV_RECORD_COLUMNS: tuple[str, ...] = (
    "run_id",
    "cell_id",
    "step_id",
    "request_id",
    "worker",
    "api",
    "warmup",
    "ok",
    "status",
    "error_class",
    "prompt_tokens",
    "output_tokens_resolved",
    "token_source",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "queue_ms",
    "start_utc",
    "end_utc",
    "scheduled_ns",
    "sent_ns",
    "first_token_ns",
    "end_ns",
)
CELL_COLUMNS: tuple[str, ...] = ("cell_id", "server", "backend", "model", "identity", "status", "simulated")
DIST_STATS: tuple[str, ...] = tuple(Dist.model_fields)


def _utc(ns: pd.Series, clock: ClockAnchor | None) -> pd.Series:
    """Monotonic ns stamps as UTC timestamps (NaT without an anchor: runs older than ``clock``)."""
    if clock is None:
        return pd.Series(pd.NaT, index=ns.index, dtype="datetime64[ns, UTC]")
    values = pd.to_numeric(ns, errors="coerce") + clock.wall_minus_monotonic_ns
    return pd.to_datetime(values, unit="ns", utc=True)


def derived_table(records: pd.DataFrame, clock: ClockAnchor | None) -> pd.DataFrame:
    """The raw records with ``DERIVED_COLUMNS`` appended, in the same row order."""
    from harness.metrics import per_request_frame

    derived = per_request_frame(records)
    out = records.reset_index(drop=True).copy()
    for name in ("ok", "ttft_ms", "tpot_ms", "e2e_ms", "queue_ms"):
        out[name] = derived[name].to_numpy()
    out["output_tokens_resolved"] = derived["output_tokens"].to_numpy()
    out["start_utc"] = _utc(out["scheduled_ns"], clock)
    out["end_utc"] = _utc(out["end_ns"], clock)
    return out


DERIVED_KEY = b"tokenbench.derived"


def derived_fingerprint(rows: int, clock: ClockAnchor | None) -> bytes:
    """What the derived columns depend on: the rows, the clock anchor and the code that derives them."""
    from harness import metrics

    digest = hashlib.sha256(Path(metrics.__file__).read_bytes() + Path(__file__).read_bytes())
    anchor = "none" if clock is None else str(clock.wall_minus_monotonic_ns)
    digest.update(f"{rows}/{anchor}".encode())
    return digest.hexdigest().encode()


def exports_current(run_dir: Path, rows: int, clock: ClockAnchor | None) -> bool:
    """Whether records.parquet already carries these derived columns and records.csv is no older.

    Why: re-rendering a finished run (``tokenbench report``) would otherwise rewrite
    both files, a gigabyte for a million requests, to the same bytes (issue 11 §3).
    """
    parquet, csv = run_dir / "records.parquet", run_dir / "records.csv"
    try:
        meta = pq.ParquetFile(parquet).schema_arrow.metadata or {}
        fresh = csv.stat().st_mtime_ns >= parquet.stat().st_mtime_ns
    except (OSError, pa.ArrowException):
        return False
    return fresh and meta.get(DERIVED_KEY) == derived_fingerprint(rows, clock)


def export_schema() -> pa.Schema:
    """``RECORD_SCHEMA`` plus ``DERIVED_COLUMNS``: the schema of the exported records.parquet."""
    schema = RECORD_SCHEMA
    kinds = {"ok": pa.bool_(), "start_utc": pa.timestamp("ns", "UTC"), "end_utc": pa.timestamp("ns", "UTC")}
    for name in DERIVED_COLUMNS:
        schema = schema.append(pa.field(name, kinds.get(name, pa.float64())))
    return schema


def write_records_exports(run_dir: Path, records: pd.DataFrame, clock: ClockAnchor | None) -> list[Path]:
    """Rewrite ``records.parquet`` as raw + derived columns and write ``records.csv``; their paths.

    Streamed, one row group of the raw records at a time (both files are written
    as they are read), so a million requests with their chunk lists never sit in
    memory twice. ``records`` gives the row count; nothing is rewritten when both
    files are ``exports_current``.
    """
    from harness.records import row_groups, table_to_frame

    parquet, csv = run_dir / "records.parquet", run_dir / "records.csv"
    rows = pq.ParquetFile(parquet).metadata.num_rows
    if exports_current(run_dir, rows, clock):
        return [parquet, csv]
    schema = export_schema().with_metadata({DERIVED_KEY: derived_fingerprint(rows, clock)})
    flat_in = pa.schema([schema.field(c) for c in CSV_RECORD_COLUMNS])
    flat_out = pa.schema(
        [
            pa.field(c, pa.string()) if c in ("start_utc", "end_utc") else flat_in.field(c)
            for c in CSV_RECORD_COLUMNS
        ]
    )
    groups = list(range(pq.ParquetFile(parquet).metadata.num_row_groups))
    raw_groups = row_groups(parquet) if groups else iter([RECORD_SCHEMA.empty_table()])
    with atomic_path(parquet) as tmp_parquet, atomic_path(csv) as tmp_csv:
        # Bounded row groups: a reader decodes one group at a time (one huge group costs its size again).
        with pq.ParquetWriter(tmp_parquet, schema) as pw, pacsv.CSVWriter(tmp_csv, flat_out) as cw:
            for raw in raw_groups:
                table = derived_table(table_to_frame(raw), clock)
                # No pandas metadata: it would name the Arrow-backed list dtype, which a plain
                # ``to_pandas()`` elsewhere (a notebook, an older tokenbench) cannot restore.
                arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
                for start in range(0, max(arrow.num_rows, 1), ROW_GROUP_ROWS):
                    pw.write_table(
                        arrow.slice(start, ROW_GROUP_ROWS).replace_schema_metadata(schema.metadata)
                    )
                flat = pa.Table.from_pandas(
                    table[list(CSV_RECORD_COLUMNS)], schema=flat_in, preserve_index=False
                )
                for name in ("start_utc", "end_utc"):  # ISO 8601 (µs), what Grafana and Prometheus tools read
                    flat = flat.set_column(
                        flat.schema.get_field_index(name), name, _iso_utc(flat.column(name))
                    )
                # Arrow's CSV writer, not pandas': a million rows took ~20 s in pandas (issue 11 §3).
                cw.write_table(flat.replace_schema_metadata(None).cast(flat_out))
    # The pair is written together, but the Parquet footer's last write lands after the CSV's: the
    # CSV would read as older than its Parquet file (``exports_current``) whenever the two writes fall
    # in different clock ticks, and every later render would rewrite both. Mark the CSV no older.
    parquet_ns, csv_stat = parquet.stat().st_mtime_ns, csv.stat()
    if csv_stat.st_mtime_ns < parquet_ns:
        os.utime(csv, ns=(csv_stat.st_atime_ns, parquet_ns))
    return [parquet, csv]


def _iso_utc(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """UTC timestamps as ``2026-01-01T00:00:00.123456Z`` (microseconds, truncated like ``%f``)."""
    micros = pc.cast(column, pa.timestamp("us", "UTC"), safe=False)
    return pc.binary_join_element_wise(pc.strftime(micros, format="%Y-%m-%dT%H:%M:%S", locale="C"), "Z", "")


def _step_fields(step: StepMetrics) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in StepMetrics.model_fields:
        value = getattr(step, name)
        if isinstance(value, Dist) or (value is None and name.endswith("_ms")):
            for stat in DIST_STATS:
                row[f"{name}_{stat}"] = getattr(value, stat) if value is not None else None
        elif isinstance(value, HarnessHealth):
            for key in HarnessHealth.model_fields:
                item = getattr(value, key)
                row[f"harness_{key}"] = "; ".join(item) if isinstance(item, list) else item
        elif isinstance(value, dict):
            row[name] = json.dumps(value, sort_keys=True) if value else ""
        else:
            row[name] = value
    return row


def summary_frame(summary: RunSummary) -> pd.DataFrame:
    """One row per cell × step (cells without a measured step get none), fixed column order."""
    rows = []
    for cell in summary.cells:
        head = {name: getattr(cell, name) for name in CELL_COLUMNS}
        head["settings"] = json.dumps(cell.settings, sort_keys=True)
        for step in cell.steps:
            rows.append({**head, **_step_fields(step)})
    if rows:
        return pd.DataFrame(rows)
    probe = StepMetrics(
        step_id="", kind="rate", target=0, duration_s=0, requests_total=0, requests_ok=0, requests_warmup=0
    )
    return pd.DataFrame(columns=[*CELL_COLUMNS, "settings", *_step_fields(probe)])


def write_summary_csv(run_dir: Path, summary: RunSummary) -> Path:
    path = run_dir / "summary.csv"
    frame = summary_frame(summary).replace({np.nan: None})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path
