"""Per-request samples of one measured step: what the gate's statistics run on.

Why a separate, compact form: a baseline is committed to a repository, so it
cannot carry ``records.parquet``. It keeps, per (cell, step), the per-request
latencies of a deterministic random subset of requests (enough for stable
percentile intervals) plus *window rates* computed from all requests before
any downsampling, so throughput intervals do not depend on the subset.

Throughput approach: the measured step (length ``duration_s`` from the first
scheduled request) is cut into K equal time windows; each request counts in
the window where it ended. A window's rate is its tokens (or requests) over
the window length, so the mean window rate equals the step's rate, and the
spread of window rates gives its noise. With repeats, windows of each repeat
form one group of the two-stage bootstrap.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from harness.listcols import itl_from_lists, list_array
from harness.metrics import per_request_frame
from harness.records import read_records
from harness.results import StepMetrics
from harness.scenario import Slo

RATE_METRICS: tuple[str, ...] = ("output_tok_s", "request_throughput", "total_tok_s", "goodput_req_s")
LATENCY_FAMILIES: tuple[str, ...] = ("ttft", "tpot", "itl", "e2e")
MIN_WINDOWS = 4
MAX_WINDOWS = 20
# ITL gaps kept per step and repeat when the caller sets no smaller cap: a million requests of 128
# chunks are 16 million gaps a step; a deterministic random subset this large moves no percentile
# visibly, and the ITL interval rests on the request count anyway (``harness.gate.measure``).
MAX_ITL = 1_000_000


@dataclass
class StepSamples:
    """One repeat of one (cell, step): per-request arrays (aligned) plus window rates."""

    identity: str
    cell_id: str
    step_id: str
    repeat: str
    duration_s: float
    n_total: int
    n_ok: int
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    e2e_ms: np.ndarray
    output_tokens: np.ndarray
    ok: np.ndarray
    error_class: list[str | None]
    itl_ms: np.ndarray
    itl_requests: int
    windows: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def latency(self, family: str) -> np.ndarray:
        """Latency samples of successful requests (NaNs, e.g. TPOT of 1-token outputs, dropped)."""
        if family == "itl":
            return self.itl_ms
        values = getattr(self, f"{family}_ms")[self.ok]
        return values[~np.isnan(values)]


def _rows_by_step(records: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """Row positions of each (cell, step): its ITL is computed when its step is, one step in memory at a time."""
    groups = records.groupby(["cell_id", "step_id"], sort=False).indices
    return {(str(cell), str(step)): rows for (cell, step), rows in groups.items()}


class _StepItl:
    """Pooled ITL samples of any rows of the records, straight from the Arrow list columns.

    Why not ``itl_samples_ms(records.iloc[rows])``: that copies every column of the
    step, chunk lists included; here a step's rows (contiguous, as steps are merged)
    are a zero-copy slice of the lists read once.
    """

    def __init__(self, records: pd.DataFrame) -> None:
        rec = records
        for name in ("chunk_times_ns", "chunk_tokens"):
            if name not in rec.columns:
                rec = rec.assign(**{name: None})
        self.times = list_array(rec["chunk_times_ns"], pa.int64())
        self.tokens = list_array(rec["chunk_tokens"], pa.int64())
        warm = rec["warmup"].fillna(False).astype(bool).to_numpy() if "warmup" in rec else False
        self.measured = rec["error_class"].isna().to_numpy() & ~warm

    def __call__(self, rows: np.ndarray | None) -> np.ndarray:
        if rows is None or rows.size == 0:
            return np.empty(0)
        if rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
            times, tokens = (
                self.times.slice(int(rows[0]), rows.size),
                self.tokens.slice(int(rows[0]), rows.size),
            )
            keep = self.measured[rows[0] : rows[-1] + 1]
        else:
            index = pa.array(rows)
            times, tokens, keep = self.times.take(index), self.tokens.take(index), self.measured[rows]
        if not keep.all():
            mask = pa.array(keep)
            times, tokens = times.filter(mask), tokens.filter(mask)
        return itl_from_lists(times, tokens)


class FileStepItl:
    """Pooled ITL samples of one (cell, step), read from records files when that step is measured.

    Why: the chunk stamps are most of a run's bytes (a million requests of 128
    chunks: 1 GB of int64). The gate reads everything else of the run at once,
    but each step's chunk lists only while that step's samples are built, using
    the row-group statistics to skip the other steps.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __call__(self, cell_id: str, step_id: str) -> np.ndarray:
        columns = ["chunk_times_ns", "chunk_tokens", "error_class", "warmup"]
        where = [("cell_id", "=", cell_id), ("step_id", "=", step_id)]
        parts = [read_records(p, columns, filters=where) for p in self.paths]
        table = pa.concat_tables(parts) if parts else None
        if table is None or table.num_rows == 0:
            return np.empty(0)
        keep = pc.and_(
            pc.is_null(table.column("error_class")), pc.invert(pc.fill_null(table.column("warmup"), False))
        )
        table = table.filter(keep)
        return itl_from_lists(table.column("chunk_times_ns"), table.column("chunk_tokens"))


def _subset(n: int, keep: int, key: str) -> np.ndarray:
    """Deterministic random subset of ``keep`` of ``n`` indices, seeded by the (cell, step) key."""
    if n <= keep:
        return np.arange(n)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return np.sort(rng.choice(n, size=keep, replace=False))


def window_rates(
    end_s: np.ndarray, weights: dict[str, np.ndarray], duration_s: float, n_ok: int
) -> dict[str, list[float]]:
    """Per-window rates of each weighted count; requests ending after the step end count in the last window."""
    k = int(min(MAX_WINDOWS, max(MIN_WINDOWS, n_ok // 20)))
    if duration_s <= 0 or end_s.size == 0:
        return {name: [] for name in weights}
    width = duration_s / k
    slot = np.clip(np.floor(end_s / width).astype(np.int64), 0, k - 1)
    return {
        name: (np.bincount(slot, weights=np.nan_to_num(w), minlength=k) / width).tolist()
        for name, w in weights.items()
    }


def extract_samples(
    records: pd.DataFrame,
    steps: dict[tuple[str, str], tuple[str, StepMetrics]],
    slo: Slo | None,
    repeat: str,
    max_requests: int | None = None,
    max_itl: int | None = None,
    itl: FileStepItl | None = None,
) -> list[StepSamples]:
    """Build one ``StepSamples`` per (cell, step) found in both the summary and the records.

    ``steps`` maps (cell_id, step_id) → (identity, StepMetrics). Warm-up
    requests are excluded. Window rates use all requests; per-request arrays
    are cut to ``max_requests`` (and ITL to ``max_itl``, at most ``MAX_ITL``) when given.
    ``itl``: where each step's chunk lists are read from, when ``records`` has none.
    """
    if records.empty:
        return []
    frame = per_request_frame(records)
    frame = frame[~frame["warmup"].fillna(False).astype(bool)]
    itl_rows, step_itl_of = _rows_by_step(records), (_StepItl(records) if itl is None else None)
    itl_cap = min(max_itl or MAX_ITL, MAX_ITL)
    limits = slo.per_request_limits() if slo is not None else {}
    out: list[StepSamples] = []
    for (cell_id, step_id), group in frame.groupby(["cell_id", "step_id"], sort=False):
        if (cell_id, step_id) not in steps:
            continue
        identity, metrics = steps[(cell_id, step_id)]
        ok = group["ok"].fillna(False).astype(bool).to_numpy()
        t0 = float(group["scheduled_ns"].min())
        end_s = (group["end_ns"].astype("float64").to_numpy() - t0) / 1e9
        duration = metrics.duration_s if metrics.duration_s > 0 else float(end_s.max(initial=0.0))
        out_tok = group["output_tokens"].astype("float64").to_numpy()
        prompt = group["prompt_tokens"].astype("float64").to_numpy()
        good = ok.copy()
        for metric, limit in limits.items():
            col = group.get(f"{metric}_ms")
            if col is not None:
                good &= np.nan_to_num(col.astype("float64").to_numpy(), nan=math.inf) <= limit
        okf = ok.astype(np.float64)
        weights = {
            "output_tok_s": np.where(ok, out_tok, 0.0),
            "request_throughput": okf,
            "total_tok_s": np.where(ok, np.nan_to_num(out_tok) + np.nan_to_num(prompt), 0.0),
            "goodput_req_s": good.astype(np.float64),
        }
        windows = window_rates(end_s, weights, duration, int(ok.sum()))
        key = f"{identity}/{step_id}/{repeat}"
        keep = _subset(len(group), max_requests or len(group), key)
        g = group.iloc[keep]
        if itl is not None:
            step_itl = itl(str(cell_id), str(step_id))
        else:
            assert step_itl_of is not None
            step_itl = step_itl_of(itl_rows.get((str(cell_id), str(step_id))))
        itl_keep = _subset(step_itl.size, itl_cap, key + "/itl")
        errors = group.loc[~ok, "error_class"].fillna("unknown").value_counts().to_dict()
        out.append(
            StepSamples(
                identity=identity,
                cell_id=str(cell_id),
                step_id=str(step_id),
                repeat=repeat,
                duration_s=float(duration),
                n_total=len(group),
                n_ok=int(ok.sum()),
                ttft_ms=g["ttft_ms"].astype("float64").to_numpy(),
                tpot_ms=g["tpot_ms"].astype("float64").to_numpy(),
                e2e_ms=g["e2e_ms"].astype("float64").to_numpy(),
                output_tokens=g["output_tokens"].astype("float64").to_numpy(),
                ok=g["ok"].fillna(False).astype(bool).to_numpy(),
                error_class=[None if pd.isna(e) else str(e) for e in g["error_class"]],
                itl_ms=step_itl[itl_keep],
                itl_requests=int(ok.sum()),
                windows=windows,
                errors={str(k): int(v) for k, v in errors.items()},
            )
        )
    return out
