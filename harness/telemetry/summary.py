"""Reduce a cell's telemetry rows to the memory numbers in ``summary.json``.

Definitions (also in docs/metrics.md):

* peak RSS: the largest RSS of the server's whole process tree in any sample
  of the cell, warm-up and idle time included: what the machine must have.
* steady RSS: the median tree RSS over samples taken while a measured load
  step was running. The median ignores the short spikes of start-up and
  step changes, so it tells what the server holds under load.
* peak / steady VRAM: the same two reductions over device memory used, summed
  over GPUs at each sample time (NVML's device figure includes other
  processes on a shared GPU). Only when a GPU was present.
* simulated runs (the sim's engine mode, no GPU): peak / steady VRAM are the
  same reductions over the *modelled* device memory the sim exposes as
  ``tokenbench_sim_vram_total_bytes`` (weights + KV-cache pool + overhead, what
  NVML would show for a vLLM that preallocates its cache). ``gpu_present``
  stays False: no GPU was there; the report labels these numbers simulated.
* peak RSS by role: for a server of several process trees (a Caikit cell's
  runtime and TGIS server), the peak RSS of each tree (``role=`` label) on its own.
* KV-cache usage peak: the largest ``vllm:kv_cache_usage_perc`` (or the
  older ``gpu_``/``cpu_cache_usage_perc``) scraped, a 0-1 fraction.
* a server not on this host (``measured_here`` False: ``external``,
  ``kserve``): no RSS and no NVML figure, since this host's processes and GPUs
  are not the server's. Peak / steady VRAM then come from the cluster's DCGM
  exporter (source ``dcgm``, ``DCGM_FI_DEV_FB_USED`` summed over the pod's
  GPUs at each query step) when ``telemetry.prometheus_url`` found them.
* GPU utilisation peak / steady: the same reductions over the mean
  utilisation (percent) of the sampled GPUs, NVML's or DCGM's.

MB here means MiB (2**20 bytes), as nvidia-smi and vLLM's logs use.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.results import MemorySummary, RemoteGpu
from harness.telemetry.prometheus import KV_CACHE_NAMES

MIB = float(2**20)
SIM_VRAM_TOTAL = "tokenbench_sim_vram_total_bytes"


def _frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=["step_id", "t_ns", "source", "name", "value"])
    missing = [c for c in ("t_ns", "source", "name", "value") if c not in frame.columns]
    if missing:
        raise ValueError(f"telemetry rows lack field(s) {missing}")
    if "step_id" not in frame.columns:
        frame = frame.assign(step_id=None)
    return frame


def _per_time(frame: pd.DataFrame, source: str, name: str) -> pd.DataFrame:
    """One value per sample time (summed over label sets, e.g. GPUs), with its step."""
    sel = frame[(frame["source"] == source) & (frame["name"] == name)]
    if sel.empty:
        return pd.DataFrame(columns=["t_ns", "step_id", "value"])
    steps = sel.groupby("t_ns")["step_id"].first()
    values = sel.groupby("t_ns")["value"].sum()
    return pd.DataFrame({"step_id": steps, "value": values}).reset_index()


def _mean_per_time(frame: pd.DataFrame, source: str, name: str) -> pd.DataFrame:
    """Like ``_per_time`` but the mean over label sets (a ratio such as utilisation, per GPU)."""
    sel = frame[(frame["source"] == source) & (frame["name"] == name)]
    if sel.empty:
        return pd.DataFrame(columns=["t_ns", "step_id", "value"])
    grouped = sel.groupby("t_ns")
    return pd.DataFrame(
        {"step_id": grouped["step_id"].first(), "value": grouped["value"].mean()}
    ).reset_index()


def _peak_and_steady(
    series: pd.DataFrame, measured: Collection[str], scale: float = MIB
) -> tuple[float | None, float | None]:
    if series.empty:
        return None, None
    values = series["value"].astype("float64").to_numpy()
    peak = float(np.nanmax(values)) / scale
    during = series[series["step_id"].isin(list(measured))]["value"].astype("float64").to_numpy()
    steady = float(np.nanmedian(during)) / scale if during.size else None
    return peak, steady


def memory_summary(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    measured_steps: Collection[str],
    *,
    measured_here: bool = True,
    remote: RemoteGpu | None = None,
) -> MemorySummary:
    """Peak/steady RSS and VRAM and peak KV-cache usage of one cell (see module docstring).

    ``measured_here`` False ignores any row of this host's process and GPU
    probes (the sampler writes none for such a server); ``remote`` is the
    cluster Prometheus's answer, kept in the summary as it is.
    """
    frame = _frame(rows)
    if not measured_here:
        frame = frame[~frame["source"].isin(["process", "gpu"])]
    peak_rss, steady_rss = _peak_and_steady(_per_time(frame, "process", "rss_bytes"), measured_steps)

    flags = frame[(frame["source"] == "gpu") & (frame["name"] == "gpu_present")]["value"]
    vram = _per_time(frame, "gpu", "gpu_used_bytes")
    gpu_present = bool((flags > 0).any()) or not vram.empty
    source = "nvml" if gpu_present else None
    util = _mean_per_time(frame, "gpu", "gpu_util")
    peak_vram, steady_vram = _peak_and_steady(vram, measured_steps) if gpu_present else (None, None)
    if not gpu_present:
        cluster = _per_time(frame, "dcgm", "gpu_used_bytes")
        modelled = _per_time(frame, "prometheus", SIM_VRAM_TOTAL)
        if not cluster.empty:
            gpu_present, source = True, "dcgm"
            peak_vram, steady_vram = _peak_and_steady(cluster, measured_steps)
            util = _mean_per_time(frame, "dcgm", "gpu_util")
        elif not modelled.empty:
            source = "modelled"
            peak_vram, steady_vram = _peak_and_steady(modelled, measured_steps)
    peak_util, steady_util = _peak_and_steady(util, measured_steps, scale=1.0)

    by_role: dict[str, float] = {}
    rss_rows = frame[(frame["source"] == "process") & (frame["name"] == "rss_bytes")]
    if "labels" in rss_rows.columns:
        for label, part in rss_rows.groupby("labels"):
            role = str(label).removeprefix("role=")
            if str(label).startswith("role=") and not part.empty:
                by_role[role] = float(part["value"].astype("float64").max()) / MIB
    kv_peak = None
    prom = frame[frame["source"] == "prometheus"]
    for name in KV_CACHE_NAMES:
        values = prom[prom["name"] == name]["value"].astype("float64")
        if not values.empty:
            kv_peak = float(values.max()) if kv_peak is None else max(kv_peak, float(values.max()))
    return MemorySummary(
        peak_rss_mb=peak_rss,
        steady_rss_mb=steady_rss,
        gpu_present=gpu_present,
        peak_vram_mb=peak_vram,
        steady_vram_mb=steady_vram,
        kv_cache_usage_peak=kv_peak,
        peak_rss_by_role_mb=by_role if len(by_role) > 1 else {},
        measured_here=measured_here,
        gpu_source=source,
        peak_gpu_util_pct=peak_util,
        steady_gpu_util_pct=steady_util,
        remote_gpu=remote,
    )


NOT_MEASURED_HERE = "not measured here"


def measurement_note(memory: MemorySummary) -> str | None:
    """One line on where a cell's memory figures come from, when it is not this host's NVML/process
    sampling of a server launched here (None then): what the terminal and the report say."""
    if memory.measured_here:
        return None
    text = f"server not on this host: host RSS and GPU memory {NOT_MEASURED_HERE}"
    remote = memory.remote_gpu
    if remote is None:
        return text + " (set telemetry.prometheus_url to read the pod's GPUs from the cluster's Prometheus)"
    if remote.status == "ok" and memory.peak_vram_mb is not None:
        steady = "–" if memory.steady_vram_mb is None else f"{memory.steady_vram_mb:.0f}"
        return (
            f"{text}; GPU memory from the cluster's Prometheus (DCGM, {remote.series} GPU(s) matching "
            f"{remote.selector}): peak {memory.peak_vram_mb:.0f} MiB, steady {steady} MiB"
        )
    return f"{text}; cluster Prometheus: {remote.status}: {remote.message or 'no data'}"
