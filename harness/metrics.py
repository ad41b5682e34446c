"""Latency, throughput and goodput metrics, computed from raw request records.

Why from records and never from Locust's statistics: Locust rounds response
times to two significant digits and knows nothing about tokens, scheduled send
times or chunk sizes. Every number here is recomputed from ``records.parquet``
rows, so a report, a gate and a re-analysis months later all agree.

Definitions (``docs/metrics.md`` has worked examples that the unit tests
reproduce exactly):

* TTFT = first_token_ns − scheduled_ns. Measured from the *scheduled* send time
  so that open-loop queueing in the client shows up (coordinated omission).
* E2E = end_ns − scheduled_ns.
* TPOT = (E2E − TTFT) / (n − 1) for requests with n ≥ 2 output tokens.
* ITL: pooled gaps between token-bearing chunks; a chunk carrying k tokens
  contributes k samples of gap/k. The first chunk's gap is TTFT, not ITL.
* Throughput and goodput are divided by the measurement window: from the first
  measured request's scheduled time to the last measured request's end.

Only non-warm-up records are measured; latency distributions use successful
requests only (a failed request's latency is not a latency of the service).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.connects import with_connects
from harness.heldload import mean_in_flight, with_held
from harness.listcols import itl_from_lists, list_array, list_lengths, list_sums
from harness.matrix import Step
from harness.records import ERROR_CLASSES, RequestRecord, records_to_table
from harness.results import Dist, HarnessHealth, StepMetrics
from harness.scenario import Slo

NS_PER_MS = 1e6
NS_PER_S = 1e9

FRAME_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "step_id",
    "request_id",
    "ok",
    "warmup",
    "error_class",
    "ttft_ms",
    "e2e_ms",
    "tpot_ms",
    "queue_ms",
    "output_tokens",
    "prompt_tokens",
    "scheduled_ns",
    "end_ns",
)

_REQUIRED = ("scheduled_ns", "sent_ns", "end_ns", "first_token_ns", "error_class")
_SERVER_SOURCES = ("usage", "usage_per_chunk")


def records_frame(rows: list[RequestRecord] | list[dict[str, Any]]) -> pd.DataFrame:
    """Records as the DataFrame the functions here take (same as reading records.parquet)."""
    return records_to_table(rows).to_pandas()


def _with_defaults(records: pd.DataFrame) -> pd.DataFrame:
    """Check required columns and fill optional ones, so hand-built frames work too."""
    missing = [c for c in _REQUIRED if c not in records.columns]
    if missing:
        raise ValueError(
            f"records frame lacks required column(s) {missing}; expected the RECORD_SCHEMA columns"
        )
    defaults: dict[str, Any] = {
        "cell_id": "",
        "step_id": "",
        "request_id": -1,
        "warmup": False,
        "chunk_times_ns": None,
        "chunk_tokens": None,
        "output_tokens": None,
        "client_output_tokens": None,
        "prompt_tokens": None,
        "token_source": "none",
        "retry_after": None,
        "requested_output_tokens": None,
    }
    out = records
    for name, value in defaults.items():
        if name not in out.columns:
            if out is records:
                out = records.copy()
            out[name] = value
    return out


def _as_float(series: pd.Series) -> np.ndarray:
    """Nullable ints → float64 with NaN for missing values."""
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()


def _resolved_output_tokens(records: pd.DataFrame) -> np.ndarray:
    """Best available output token count: the load layer's count, then the client's, then chunk tokens."""
    n = _as_float(records["output_tokens"])
    client = _as_float(records["client_output_tokens"])
    n = np.where(np.isnan(n), client, n)
    missing = np.isnan(n)
    if missing.any():  # only the rows without a count: summing every row's chunk list would cost the most
        n = n.copy()
        n[missing] = list_sums(records["chunk_tokens"][missing])
    return n


def per_request_frame(records: pd.DataFrame) -> pd.DataFrame:
    """One row per request with its own latencies; what the regression gate resamples.

    Latencies of failed requests are NaN (only ``queue_ms`` is kept for them).
    ``tpot_ms`` is NaN when fewer than two output tokens are known.
    """
    records = _with_defaults(records)
    scheduled = _as_float(records["scheduled_ns"])
    sent = _as_float(records["sent_ns"])
    end = _as_float(records["end_ns"])
    first = _as_float(records["first_token_ns"])
    ok = records["error_class"].isna().to_numpy()
    n = _resolved_output_tokens(records)

    ttft = np.where(ok, (first - scheduled) / NS_PER_MS, np.nan)
    e2e = np.where(ok, (end - scheduled) / NS_PER_MS, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (n >= 2), (end - first) / NS_PER_MS / (n - 1), np.nan)
    return pd.DataFrame(
        {
            "cell_id": records["cell_id"].to_numpy(),
            "step_id": records["step_id"].to_numpy(),
            "request_id": records["request_id"].to_numpy(),
            "ok": ok,
            "warmup": records["warmup"].fillna(False).astype(bool).to_numpy(),
            "error_class": records["error_class"].to_numpy(),
            "ttft_ms": ttft,
            "e2e_ms": e2e,
            "tpot_ms": tpot,
            "queue_ms": (sent - scheduled) / NS_PER_MS,
            "output_tokens": n,
            "prompt_tokens": _as_float(records["prompt_tokens"]),
            "scheduled_ns": records["scheduled_ns"].to_numpy(),
            "end_ns": records["end_ns"].to_numpy(),
        },
        columns=list(FRAME_COLUMNS),
    )


def itl_samples_ms(records: pd.DataFrame, *, measured_only: bool = True) -> np.ndarray:
    """Pooled inter-token latencies (ms); a chunk with k tokens gives k samples of gap/k.

    With ``measured_only`` (the default) warm-up and failed requests are left out.
    """
    records = _with_defaults(records)
    if measured_only:
        mask = records["error_class"].isna() & ~records["warmup"].fillna(False).astype(bool)
        records = records[mask]
    if records.empty:
        return np.empty(0)
    return itl_from_lists(
        list_array(records["chunk_times_ns"], pa.int64()), list_array(records["chunk_tokens"], pa.int64())
    )


def dist(values: np.ndarray | pd.Series) -> Dist | None:
    """Exact statistics (numpy 'linear' percentiles on raw samples); None when there are none."""
    arr = np.asarray(values, dtype="float64")
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return None
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99], method="linear")
    return Dist(
        count=int(arr.size),
        mean=float(arr.mean()),
        p50=float(p50),
        p90=float(p90),
        p95=float(p95),
        p99=float(p99),
        max=float(arr.max()),
        min=float(arr.min()),
    )


def arrival_stats(scheduled_ns: np.ndarray) -> tuple[float | None, float | None]:
    """(achieved rate in req/s, coefficient of variation of inter-arrival gaps).

    Rate = (N − 1) / (last − first scheduled time): N arrivals span N − 1 gaps.
    CV = population std / mean of the gaps; 1.0 for a Poisson process, 0 for a
    constant rate. None when fewer than 2 (rate) or 3 (CV) arrivals.
    """
    t = np.sort(np.asarray(scheduled_ns, dtype="int64"))
    if t.size < 2:
        return None, None
    gaps = np.diff(t).astype("float64")
    span = float(t[-1] - t[0])
    rate = (t.size - 1) / (span / NS_PER_S) if span > 0 else None
    cv = float(gaps.std() / gaps.mean()) if t.size >= 3 and gaps.mean() > 0 else None
    return rate, cv


def _goodput_mask(frame: pd.DataFrame, limits: Mapping[str, float]) -> np.ndarray:
    """Successful requests whose own TTFT/TPOT/E2E meet every limit.

    A limit on a metric the request does not have (TPOT of a one-token reply)
    is met vacuously. ITL limits are not applied per request: a request has many
    gaps, and 'every gap under the p99 limit' would be a much stricter test.
    """
    good = frame["ok"].to_numpy().copy()
    for metric in ("ttft", "tpot", "e2e"):
        if metric in limits:
            values = frame[f"{metric}_ms"].to_numpy()
            meets = values <= limits[metric]
            if metric == "tpot":
                meets |= np.isnan(values)
            good &= meets
    return good


def _health(health: Mapping[str, Any] | None) -> HarnessHealth:
    """Map the load layer's health dict to the model; unknown keys are ignored."""
    if not health:
        return HarnessHealth()
    known = set(HarnessHealth.model_fields)
    return HarnessHealth.model_validate({k: v for k, v in health.items() if k in known and v is not None})


def _errors(error_classes: pd.Series) -> dict[str, int]:
    counts = {name: 0 for name in ERROR_CLASSES}
    for name, count in error_classes.dropna().value_counts().items():
        counts[str(name)] = counts.get(str(name), 0) + int(count)
    return counts


def _token_agreement(measured_ok: pd.DataFrame) -> float | None:
    """Fraction of ok requests with a server count whose count equals the client's own count."""
    server = measured_ok["token_source"].isin(_SERVER_SOURCES).to_numpy()
    srv = _as_float(measured_ok["output_tokens"])
    cli = _as_float(measured_ok["client_output_tokens"])
    both = server & ~np.isnan(srv) & ~np.isnan(cli)
    if not both.any():
        return None
    return float(np.mean(srv[both] == cli[both]))


def _chunks_per_token(measured_ok: pd.DataFrame, tokens: np.ndarray) -> float | None:
    chunks = int(list_lengths(list_array(measured_ok["chunk_times_ns"], pa.int64())).sum())
    total = float(np.nansum(tokens))
    return chunks / total if total > 0 else None


def _nanmean(values: np.ndarray) -> float | None:
    """The mean of the known values; None when there are none."""
    arr = np.asarray(values, dtype="float64")
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else None


def compute_step_metrics(
    records: pd.DataFrame,
    *,
    step: Step,
    slo: Slo,
    duration_s: float | None = None,
    health: dict[str, Any] | None = None,
) -> StepMetrics:
    """All metrics of one cell × step from its records (rows of other steps are ignored).

    ``duration_s``, when given, replaces the measurement window's length as the
    throughput denominator (for a load layer that knows its measured phase
    exactly); otherwise the window is first measured scheduled → last measured end.
    """
    records = _with_defaults(records)
    if len(records) and "step_id" in records.columns:
        records = records[records["step_id"] == step.step_id]
    warm = records["warmup"].fillna(False).astype(bool).to_numpy()
    measured = records[~warm]
    frame = per_request_frame(measured)
    ok = frame["ok"].to_numpy()
    base = {
        "step_id": step.step_id,
        "kind": step.kind,
        "target": step.target,
        "requests_warmup": int(warm.sum()),
        "harness": _health(
            with_held(with_connects(health, measured), measured, step.kind, step.target, records[warm])
        ),
    }
    if measured.empty:
        return StepMetrics(**base, duration_s=duration_s or 0.0, requests_total=0, requests_ok=0)

    window = (int(measured["scheduled_ns"].min()), int(measured["end_ns"].max()))
    window_s = duration_s if duration_s is not None else (window[1] - window[0]) / NS_PER_S
    per_s = (1.0 / window_s) if window_s > 0 else 0.0

    ok_frame = frame[ok]
    measured_ok = measured[ok]
    out_tokens = ok_frame["output_tokens"].to_numpy()
    prompt_tokens = ok_frame["prompt_tokens"].to_numpy()

    limits = slo.per_request_limits()
    goodput = attainment = None
    if limits:
        good = _goodput_mask(frame, limits)
        goodput = float(good.sum()) * per_s
        attainment = float(good.mean())

    rate = cv = None
    if step.kind == "rate":
        rate, cv = arrival_stats(measured["scheduled_ns"].to_numpy())

    n_total = len(measured)
    requested = _as_float(measured_ok["requested_output_tokens"]) if len(measured_ok) else np.empty(0)
    return StepMetrics(
        **base,
        duration_s=float(window_s),
        requests_total=n_total,
        requests_ok=int(ok.sum()),
        ttft_ms=dist(ok_frame["ttft_ms"]),
        itl_ms=dist(itl_samples_ms(measured)),
        tpot_ms=dist(ok_frame["tpot_ms"]),
        e2e_ms=dist(ok_frame["e2e_ms"]),
        queue_ms=dist(ok_frame["queue_ms"]),
        request_throughput=float(ok.sum()) * per_s,
        output_tok_s=float(np.nansum(out_tokens)) * per_s,
        total_tok_s=float(np.nansum(out_tokens) + np.nansum(prompt_tokens)) * per_s,
        goodput_req_s=goodput,
        slo_attainment=attainment,
        error_rate=float((~ok).sum()) / n_total,
        errors=_errors(measured["error_class"]),
        # Counted, never honoured: a benchmark that backed off would hide the overload it measures.
        retry_after_responses=int(measured["retry_after"].notna().sum()),
        token_agreement=_token_agreement(measured_ok),
        token_sources={
            str(k): int(v) for k, v in measured_ok["token_source"].fillna("none").value_counts().items()
        },
        chunks_per_token=_chunks_per_token(measured_ok, out_tokens),
        achieved_rate=rate,
        arrival_cv=cv,
        mean_in_flight=mean_in_flight(measured["sent_ns"].to_numpy(), measured["end_ns"].to_numpy(), window),
        output_tokens_mean=_nanmean(out_tokens),
        requested_output_tokens_mean=_nanmean(requested),
    )


__all__ = [
    "FRAME_COLUMNS",
    "arrival_stats",
    "compute_step_metrics",
    "dist",
    "itl_from_lists",
    "itl_samples_ms",
    "list_array",
    "mean_in_flight",
    "per_request_frame",
    "records_frame",
]
