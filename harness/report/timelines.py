"""Figures over time: KV-cache usage and server queue, and the time axis all timelines share.

Why time-aligned: the harness, the process sampler and the Prometheus
scraper all stamp samples with ``time.monotonic_ns()``, so one axis (seconds
since the run's first sample) shows a latency knee next to the queue growing
or the KV cache filling. Steps are shaded so a reader can tell which load
level produced which part of the curve. The cluster's GPU series (wall-clock
Prometheus timestamps) are put on this axis when they are fetched
(``harness.telemetry.clock``), so they share it too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from harness.report.data import RunData, run_origin_ns, step_windows
from harness.report.figures import cell_label, ordered
from harness.report.svg import Figure, new_figure, placeholder, styled, to_svg

GIB = float(2**30)
KV_NAME = "vllm:kv_cache_usage_perc"
KV_NAME_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10 called it this, even on CPU
RUNNING_NAME = "vllm:num_requests_running"
WAITING_NAME = "vllm:num_requests_waiting"
TGI_RUNNING_NAME = "tgi_batch_current_size"
TGI_WAITING_NAME = "tgi_queue_size"


def series(run: RunData, source: str, name: str, how: str = "sum") -> pd.DataFrame:
    """Samples of one metric as ``cell_id, t_s, value``, labels folded per timestamp.

    Several label sets at one timestamp (several processes of one server, one
    gauge per engine) are summed for counts and bytes and averaged for ratios.
    """
    ts = run.timeseries
    origin = run_origin_ns(run)
    if ts.empty or origin is None:
        return pd.DataFrame(columns=["cell_id", "t_s", "value"])
    sel = ts[(ts["source"] == source) & (ts["name"] == name)]
    if sel.empty:
        return pd.DataFrame(columns=["cell_id", "t_s", "value"])
    folded = sel.groupby(["cell_id", "t_ns"], sort=True)["value"].agg(how).reset_index()
    folded["t_s"] = (folded["t_ns"].astype("float64") - origin) / 1e9
    return folded[["cell_id", "t_s", "value"]]


def shade_steps(ax: Axes, run: RunData) -> None:
    origin = run_origin_ns(run)
    windows = step_windows(run)
    if origin is None or windows.empty:
        return
    for i, w in enumerate(windows.itertuples(index=False)):
        start, end = (float(w.start_ns) - origin) / 1e9, (float(w.end_ns) - origin) / 1e9
        ax.axvspan(start, end, color="#6b7280" if i % 2 else "#9ca3af", alpha=0.10, lw=0)
        ax.text(
            (start + end) / 2,
            1.0,
            str(w.step_id),
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            color="#4b5563",
            clip_on=False,
        )


def with_gaps(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN after every gap longer than 3× the median interval, so no line bridges it.

    Why: between two load steps (or while a server restarts) there are no
    samples; a line drawn across that gap would invent a ramp nobody measured.
    """
    if t.size < 3:
        return t, v
    dt = np.diff(t)
    limit = 3.0 * float(np.median(dt))
    cut = np.nonzero(dt > limit)[0] if limit > 0 else np.empty(0, dtype=np.int64)
    if cut.size == 0:
        return t, v
    return np.insert(t, cut + 1, t[cut] + dt[cut] / 2), np.insert(v.astype("float64"), cut + 1, np.nan)


def lines(
    ax: Axes, data: pd.DataFrame, colors: dict[str, str], scale: float = 1.0, ls: str = "-"
) -> list[str]:
    """One series per cell, drawn as held values between samples (steps), with a dot at each sample.

    A gauge sampled every few seconds says nothing about the time between
    samples; a straight line between two of them would draw a ramp the
    server never reported. Each value is held until the next sample, and
    gaps with no samples stay empty.
    """
    drawn: list[str] = []
    for cid, part in data.groupby("cell_id", sort=False):
        part = part.sort_values("t_s")
        t, v = with_gaps(
            part["t_s"].to_numpy(dtype="float64"), part["value"].to_numpy(dtype="float64") * scale
        )
        color = colors.get(str(cid), "#374151")
        ax.plot(t, v, ls, lw=1.2, color=color, drawstyle="steps-post")
        if len(part) <= 200:  # sparse samples: show where they are (dense ones would be a smear)
            ax.plot(t, v, "o", ms=2.2, color=color)
        drawn.append(str(cid))
    return drawn


def legend(ax: Axes, cells: list[str], colors: dict[str, str], sims: set[str], extra: list[Line2D]) -> None:
    handles = [
        Line2D([], [], color=colors.get(c, "#374151"), label=cell_label(c, c in sims))
        for c in ordered(cells, colors)
    ]
    ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def kv_cache_timeline(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "kv_cache_timeline"
    title = "Server KV-cache usage"
    caption = (
        f"KV-cache usage reported by the server ({KV_NAME}, Prometheus /metrics) over time; shaded bands are "
        "load steps. A cache near 100% means new requests wait or running ones are preempted."
    )
    data = series(run, "prometheus", KV_NAME, how="mean")
    if data.empty:
        data = series(run, "prometheus", KV_NAME_OLD, how="mean")
    if data.empty:
        note = "Not available: no server scraped exposed vllm:kv_cache_usage_perc (not a vLLM backend, or /metrics unreachable)."
        return placeholder(fig_id, title, caption, note)
    scale = 100.0 if float(data["value"].max()) <= 1.0 else 1.0
    with styled():
        fig = new_figure(9.5, 2.8)
        ax = fig.subplots()
        cells = lines(ax, data, colors, scale)
        shade_steps(ax, run)
        ax.set_ylabel("KV cache used (%)")
        ax.set_xlabel("time since first sample (s)")
        ax.set_ylim(0, 105)
        legend(ax, cells, colors, run.simulated_cells, [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def queue_timeline(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "queue_timeline"
    title = "Server queue: running and waiting requests"
    caption = (
        f"Requests the server was running (solid, {RUNNING_NAME} or TGI's {TGI_RUNNING_NAME}) and holding "
        f"in its queue (dashed, {WAITING_NAME} or {TGI_WAITING_NAME}) over time; shaded bands are load steps."
    )
    # vLLM's names, or TGI's for cells that expose those instead (each cell exposes one set).
    running = pd.concat(
        [series(run, "prometheus", RUNNING_NAME), series(run, "prometheus", TGI_RUNNING_NAME)],
        ignore_index=True,
    )
    waiting = pd.concat(
        [series(run, "prometheus", WAITING_NAME), series(run, "prometheus", TGI_WAITING_NAME)],
        ignore_index=True,
    )
    if running.empty and waiting.empty:
        note = (
            "Not available: no server scraped exposed vllm:num_requests_running / vllm:num_requests_waiting."
        )
        return placeholder(fig_id, title, caption, note)
    with styled():
        fig = new_figure(9.5, 2.8)
        ax = fig.subplots()
        cells = lines(ax, running, colors) if not running.empty else []
        if not waiting.empty:
            cells += [c for c in lines(ax, waiting, colors, ls="--") if c not in cells]
        shade_steps(ax, run)
        ax.set_ylabel("requests")
        ax.set_xlabel("time since first sample (s)")
        ax.set_ylim(bottom=0)
        extra = [
            Line2D([], [], color="#374151", label="running"),
            Line2D([], [], color="#374151", ls="--", label="waiting"),
        ]
        legend(ax, cells, colors, run.simulated_cells, extra)
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))
