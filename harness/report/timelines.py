"""Figures over time and memory: RSS/VRAM, KV-cache usage, server queue.

Why time-aligned: the harness, the process sampler and the Prometheus
scraper all stamp samples with ``time.monotonic_ns()``, so one axis (seconds
since the run's first sample) shows a latency knee next to the queue growing
or the KV cache filling. Steps are shaded so a reader can tell which load
level produced which part of the curve.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.report.data import RunData, run_origin_ns, step_windows
from harness.report.figures import cell_label
from harness.report.svg import Figure, new_figure, note_axes, placeholder, styled, to_svg

GIB = float(2**30)
KV_NAME = "vllm:kv_cache_usage_perc"
KV_NAME_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10 called it this, even on CPU
RUNNING_NAME = "vllm:num_requests_running"
WAITING_NAME = "vllm:num_requests_waiting"


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


def _shade_steps(ax: Axes, run: RunData) -> None:
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


def _lines(
    ax: Axes, data: pd.DataFrame, colors: dict[str, str], scale: float = 1.0, ls: str = "-"
) -> list[str]:
    drawn: list[str] = []
    for cid, part in data.groupby("cell_id", sort=False):
        ax.plot(part["t_s"], part["value"] * scale, ls, lw=1.2, color=colors.get(str(cid), "#374151"))
        drawn.append(str(cid))
    return drawn


def _legend(ax: Axes, cells: list[str], colors: dict[str, str], sims: set[str], extra: list[Line2D]) -> None:
    handles = [Line2D([], [], color=colors.get(c, "#374151"), label=cell_label(c, c in sims)) for c in cells]
    ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def memory_timeline(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "memory_timeline"
    title = "Server memory over time"
    caption = (
        "Resident memory (RSS) of each cell's server process tree, seconds since the run's first sample; "
        "shaded bands are load steps. GPU memory is shown below it when a GPU was sampled."
    )
    rss = series(run, "process", "rss_bytes")
    vram = series(run, "gpu", "gpu_used_bytes")
    if rss.empty and vram.empty:
        return placeholder(fig_id, title, caption, "No memory samples in timeseries.parquet.")
    sims = run.simulated_cells
    with styled():
        panels = [(rss, "server RSS (GiB)")] + ([(vram, "GPU memory used (GiB)")] if not vram.empty else [])
        fig = new_figure(9.5, 2.9 * len(panels))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        cells: list[str] = []
        for ax, (data, ylabel) in zip(axes, panels, strict=True):
            if data.empty:
                note_axes(ax, "no RSS samples")
                continue
            cells += [c for c in _lines(ax, data, colors, 1 / GIB) if c not in cells]
            _shade_steps(ax, run)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
        axes[-1].set_xlabel("time since first sample (s)")
        _legend(axes[0], cells, colors, sims, [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def _mb(value: float | None) -> float:
    return math.nan if value is None else float(value)


def memory_values(run: RunData) -> dict[str, dict[str, float]]:
    """Peak and steady memory (MB) per cell: the summary's numbers, else from the raw samples."""
    out: dict[str, dict[str, float]] = {}
    rss = series(run, "process", "rss_bytes")
    vram = series(run, "gpu", "gpu_used_bytes")
    for cid in run.cell_ids:
        cell = run.cell(cid)
        mem = cell.memory if cell is not None else None
        values = {
            "peak_rss": _mb(mem.peak_rss_mb if mem else None),
            "steady_rss": _mb(mem.steady_rss_mb if mem else None),
            "peak_vram": _mb(mem.peak_vram_mb if mem else None),
            "steady_vram": _mb(mem.steady_vram_mb if mem else None),
        }
        for prefix, data in (("rss", rss), ("vram", vram)):
            mine = data[data["cell_id"] == cid]["value"].to_numpy(dtype=float) / 2**20
            if mine.size and math.isnan(values[f"peak_{prefix}"]):
                values[f"peak_{prefix}"] = float(mine.max())
                values[f"steady_{prefix}"] = float(np.median(mine[mine.size // 2 :]))
        out[cid] = values
    return out


def _bars(
    ax: Axes, cells: list[str], values: dict[str, dict[str, float]], kind: str, colors: dict[str, str]
) -> None:
    x = np.arange(len(cells))
    peak = [values[c][f"peak_{kind}"] / 1024 for c in cells]
    steady = [values[c][f"steady_{kind}"] / 1024 for c in cells]
    cols = [colors.get(c, "#374151") for c in cells]
    ax.bar(x - 0.2, peak, 0.38, color=cols, label="peak")
    ax.bar(x + 0.2, steady, 0.38, color=cols, alpha=0.45, hatch="//", edgecolor="white", label="steady")
    for xi, p in zip(x, peak, strict=True):
        if math.isfinite(p):
            ax.annotate(
                f"{p:.2f}", (xi - 0.2, p), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7
            )
    ax.set_xticks(x, [c.replace("__", "\n") for c in cells], fontsize=7.5)
    ax.set_ylabel("GiB")
    ax.grid(axis="x", visible=False)
    ax.legend(
        handles=[Patch(color="#6b7280", label="peak"), Patch(color="#6b7280", alpha=0.45, label="steady")],
        loc="lower right",
        fontsize=7,
    )


def memory_bars(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "memory_peak"
    title = "Peak and steady memory per configuration"
    caption = (
        "Peak (solid) and steady-state (hatched, median of the later samples) memory per cell: "
        "host RSS on the left, GPU memory on the right."
    )
    values = memory_values(run)
    cells = [c for c in run.cell_ids if any(math.isfinite(v) for v in values[c].values())]
    have_rss = any(math.isfinite(values[c]["peak_rss"]) for c in cells)
    gpu = any(math.isfinite(values[c]["peak_vram"]) for c in cells)
    gpu_present = gpu or any(c.memory.gpu_present for c in run.summary.cells)
    if not have_rss and not gpu:
        return placeholder(fig_id, title, caption, "No memory data in summary.json or timeseries.parquet.")
    with styled():
        fig = new_figure(9.5, 3.0)
        left, right = fig.subplots(1, 2)
        if have_rss:
            _bars(left, cells, values, "rss", colors)
            left.set_title("host RSS")
        else:
            note_axes(left, "no RSS samples")
        if gpu:
            _bars(right, cells, values, "vram", colors)
            right.set_title("GPU memory")
        else:
            note_axes(
                right, "GPU memory: no VRAM samples" if gpu_present else "GPU memory: no GPU on this host"
            )
        return Figure(fig_id, title, caption, to_svg(fig, fig_id), note=None if gpu else "no GPU")


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
        cells = _lines(ax, data, colors, scale)
        _shade_steps(ax, run)
        ax.set_ylabel("KV cache used (%)")
        ax.set_xlabel("time since first sample (s)")
        ax.set_ylim(0, 105)
        _legend(ax, cells, colors, run.simulated_cells, [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def queue_timeline(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "queue_timeline"
    title = "Server queue: running and waiting requests"
    caption = (
        f"Requests the server was running (solid, {RUNNING_NAME}) and holding in its queue (dashed, "
        f"{WAITING_NAME}) over time; shaded bands are load steps."
    )
    running = series(run, "prometheus", RUNNING_NAME)
    waiting = series(run, "prometheus", WAITING_NAME)
    if running.empty and waiting.empty:
        note = (
            "Not available: no server scraped exposed vllm:num_requests_running / vllm:num_requests_waiting."
        )
        return placeholder(fig_id, title, caption, note)
    with styled():
        fig = new_figure(9.5, 2.8)
        ax = fig.subplots()
        cells = _lines(ax, running, colors) if not running.empty else []
        if not waiting.empty:
            cells += [c for c in _lines(ax, waiting, colors, ls="--") if c not in cells]
        _shade_steps(ax, run)
        ax.set_ylabel("requests")
        ax.set_xlabel("time since first sample (s)")
        ax.set_ylim(bottom=0)
        extra = [
            Line2D([], [], color="#374151", label="running"),
            Line2D([], [], color="#374151", ls="--", label="waiting"),
        ]
        _legend(ax, cells, colors, run.simulated_cells, extra)
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))
