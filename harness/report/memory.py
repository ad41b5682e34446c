"""Memory figures: host RSS and GPU memory over time, and peak/steady memory per cell.

Why their own module: a cell's memory can come from four places, and a reader
must be told which: NVML and the process trees on this host (a server the
harness launched here), the cluster's Prometheus (DCGM exporter) for a server
elsewhere, the simulator's modelled VRAM, or nowhere ("not measured here",
never a blank or a zero). Time is the shared axis of ``timelines``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.report.data import RunData, memory_notes, not_here, run_origin_ns
from harness.report.svg import Figure, new_figure, note_axes, placeholder, styled, to_svg
from harness.report.timelines import GIB, legend, lines, series, shade_steps

# The sim's modelled GPU memory (engine mode): the stand-in for NVML on simulated runs.
SIM_VRAM_PREFIX = "tokenbench_sim_vram_"
SIM_VRAM_PARTS: tuple[tuple[str, str, str], ...] = (
    ("total", "-", "total (weights + KV pool + overhead)"),
    ("weights", ":", "weights"),
    ("kv_cache", "--", "KV-cache pool"),
)
SIM_KV_USED = "tokenbench_sim_kv_cache_used_bytes"
# GPU memory of a server not on this host, from the cluster's Prometheus (harness/telemetry/dcgm.py).
CLUSTER_SOURCE = "dcgm"
CLUSTER_LS = "--"


ROLE_STYLES = ("--", ":", "-.")


def role_series(run: RunData) -> dict[str, pd.DataFrame]:
    """RSS of each process tree (``role=`` label) of the cells whose server has more than one.

    A Caikit cell runs a TGIS server and the Caikit runtime; its solid line is
    their sum, and these are the parts. Cells of one tree are left out (their
    part is the whole).
    """
    ts = run.timeseries
    origin = run_origin_ns(run)
    if ts.empty or origin is None or "labels" not in ts.columns:
        return {}
    sel = ts[(ts["source"] == "process") & (ts["name"] == "rss_bytes")]
    sel = sel[sel["labels"].astype(str).str.startswith("role=")]
    multi = [c for c, part in sel.groupby("cell_id") if part["labels"].nunique() > 1]
    sel = sel[sel["cell_id"].isin(multi)]
    out: dict[str, pd.DataFrame] = {}
    for label, part in sel.groupby("labels", sort=True):
        frame = part[["cell_id", "t_ns", "value"]].sort_values("t_ns").copy()
        frame["t_s"] = (frame["t_ns"].astype("float64") - origin) / 1e9
        out[str(label).removeprefix("role=")] = frame[["cell_id", "t_s", "value"]]
    return out


def modelled_vram(run: RunData) -> dict[str, pd.DataFrame]:
    """The sim's modelled GPU memory series by part (``total``, ``weights``, ``kv_cache``, ``kv_used``).

    Only parts that were scraped are returned; empty when no cell ran the sim's engine mode.
    """
    out: dict[str, pd.DataFrame] = {}
    for part, _, _ in SIM_VRAM_PARTS:
        data = series(run, "prometheus", f"{SIM_VRAM_PREFIX}{part}_bytes")
        if not data.empty:
            out[part] = data
    used = series(run, "prometheus", SIM_KV_USED)
    if not used.empty and out:
        out["kv_used"] = used
    return out


def _modelled_panel(
    ax: Axes, parts: dict[str, pd.DataFrame], colors: dict[str, str]
) -> tuple[list[str], list[Line2D]]:
    """Draw modelled VRAM by part; returns the cells drawn and the legend entries for the line styles."""
    cells: list[str] = []
    extra: list[Line2D] = []
    styles = [*SIM_VRAM_PARTS, ("kv_used", "-.", "KV cache in use")]
    for part, ls, label in styles:
        if part in parts:
            cells += [c for c in lines(ax, parts[part], colors, 1 / GIB, ls=ls) if c not in cells]
            extra.append(Line2D([], [], color="#374151", ls=ls, label=f"modelled {label}"))
    return cells, extra


def vram_series(run: RunData) -> pd.DataFrame:
    """Device memory used per cell: NVML's (this host), else the cluster's DCGM series."""
    local = series(run, "gpu", "gpu_used_bytes")
    cluster = series(run, CLUSTER_SOURCE, "gpu_used_bytes")
    cluster = cluster[~cluster["cell_id"].isin(set(local["cell_id"]))]
    if cluster.empty:
        return local
    return cluster if local.empty else pd.concat([local, cluster], ignore_index=True)


def _memory_caption(run: RunData, caption: str) -> str:
    cluster = set(series(run, CLUSTER_SOURCE, "gpu_used_bytes")["cell_id"])
    if cluster:
        caption += (
            f" GPU memory of {', '.join(sorted(cluster))} is the cluster's Prometheus (DCGM exporter, "
            "DCGM_FI_DEV_FB_USED of the server pod's GPUs; dashed), held between the exporter's scrapes "
            "and put on this run's clock."
        )
    notes = memory_notes(run)
    if notes:
        caption += " " + " ".join(f"{n}." for n in notes)
    return caption


def memory_timeline(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "memory_timeline"
    title = "Server memory over time"
    caption = (
        "Resident memory (RSS) of each cell's server process tree, seconds since the run's first sample; "
        "shaded bands are load steps. GPU memory is shown below it when a GPU was sampled."
    )
    rss = series(run, "process", "rss_bytes")
    vram = vram_series(run)
    cluster_cells = set(series(run, CLUSTER_SOURCE, "gpu_used_bytes")["cell_id"]) - set(
        series(run, "gpu", "gpu_used_bytes")["cell_id"]
    )
    modelled = modelled_vram(run)
    roles = role_series(run)
    if roles:
        caption += (
            " A server of several process trees (e.g. Caikit runtime + TGIS) is drawn as their sum "
            "(solid) and each tree on its own ("
            + ", ".join(f"{r}: {ROLE_STYLES[i % len(ROLE_STYLES)]}" for i, r in enumerate(roles))
            + ")."
        )
    if modelled:
        caption += (
            " The last panel is the simulator's MODELLED VRAM (weights, KV-cache pool, overhead and the "
            "KV cache in use, from its /metrics), labelled SIMULATED: no GPU was measured."
        )
    caption = _memory_caption(run, caption)
    if rss.empty and vram.empty and not modelled:
        elsewhere = not_here(run)
        note = "No memory samples in timeseries.parquet."
        if elsewhere and len(elsewhere) == len(run.summary.cells):
            note = "Memory not measured here: the server ran on another host (see the caption)."
        return placeholder(fig_id, title, caption, note)
    sims = run.simulated_cells
    with styled():
        panels: list[tuple[str, str]] = [("rss", "server RSS (GiB)")]
        if not vram.empty:
            panels.append(("vram", "GPU memory used (GiB)"))
        if modelled:
            panels.append(("modelled", "SIMULATED: modelled\nGPU memory (GiB)"))
        fig = new_figure(9.5, 2.9 * len(panels))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        cells: list[str] = []
        extra: list[Line2D] = []
        for ax, (kind, ylabel) in zip(axes, panels, strict=True):
            if kind == "modelled":
                drawn, more = _modelled_panel(ax, modelled, colors)
                extra += more
                ax.set_title("SIMULATED: modelled VRAM (sim engine mode), not a measurement", fontsize=8)
            else:
                data = rss if kind == "rss" else vram
                if data.empty:
                    note_axes(ax, "host RSS: not measured here" if not_here(run) else "no RSS samples")
                    continue
                if kind == "vram" and cluster_cells:
                    drawn = lines(ax, data[~data["cell_id"].isin(cluster_cells)], colors, 1 / GIB)
                    cluster = data[data["cell_id"].isin(cluster_cells)]
                    drawn += lines(ax, cluster, colors, 1 / GIB, ls=CLUSTER_LS)
                    extra.append(
                        Line2D([], [], color="#374151", ls=CLUSTER_LS, label="cluster Prometheus (DCGM)")
                    )
                else:
                    drawn = lines(ax, data, colors, 1 / GIB)
                if kind == "rss":
                    for i, (role, part) in enumerate(roles.items()):
                        ls = ROLE_STYLES[i % len(ROLE_STYLES)]
                        lines(ax, part, colors, 1 / GIB, ls=ls)
                        extra.append(Line2D([], [], color="#374151", ls=ls, label=f"process tree: {role}"))
            cells += [c for c in drawn if c not in cells]
            shade_steps(ax, run)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
        axes[-1].set_xlabel("time since first sample (s)")
        legend(axes[0], cells, colors, sims, extra)
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def _mb(value: float | None) -> float:
    return math.nan if value is None else float(value)


def memory_values(run: RunData) -> dict[str, dict[str, float]]:
    """Peak and steady memory (MB) per cell: the summary's numbers, else from the raw samples."""
    out: dict[str, dict[str, float]] = {}
    rss = series(run, "process", "rss_bytes")
    vram = vram_series(run)
    modelled = modelled_vram(run).get("total")
    if modelled is not None:
        measured = set(vram["cell_id"])
        vram = pd.concat([vram, modelled[~modelled["cell_id"].isin(measured)]], ignore_index=True)
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
    finite = [p for p in peak + steady if math.isfinite(p)]
    top = max(finite, default=1.0) or 1.0
    crowded = len(cells) > 3  # side-by-side labels of several cells overlap: turn them upright
    for xi, p in zip(x, peak, strict=True):
        if math.isfinite(p):
            ax.annotate(
                f"{p:.2f}",
                (xi - 0.2, p),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                va="bottom",
                rotation=90 if crowded else 0,
                fontsize=7,
            )
    ax.set_ylim(0, top * (1.45 if crowded else 1.3))  # headroom for the labels and the legend
    names = [c.replace("__", "\n") for c in cells]
    if crowded:
        ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    else:
        ax.set_xticks(x, names, fontsize=7.5)
    ax.set_ylabel("GiB")
    ax.grid(axis="x", visible=False)
    ax.legend(
        handles=[Patch(color="#6b7280", label="peak"), Patch(color="#6b7280", alpha=0.45, label="steady")],
        loc="upper right",
        ncols=2,
        fontsize=7,
    )


def memory_bars(run: RunData, colors: dict[str, str]) -> Figure:
    fig_id = "memory_peak"
    title = "Peak and steady memory per configuration"
    caption = (
        "Peak (solid) and steady-state (hatched, median of the later samples) memory per cell: "
        "host RSS on the left, GPU memory on the right."
    )
    caption = _memory_caption(run, caption)
    elsewhere = not_here(run)
    values = memory_values(run)
    cells = [c for c in run.cell_ids if any(math.isfinite(v) for v in values[c].values())]
    have_rss = any(math.isfinite(values[c]["peak_rss"]) for c in cells)
    gpu = any(math.isfinite(values[c]["peak_vram"]) for c in cells)
    total = modelled_vram(run).get("total")
    nvml = set(series(run, "gpu", "gpu_used_bytes")["cell_id"])
    cluster_cells = set(series(run, CLUSTER_SOURCE, "gpu_used_bytes")["cell_id"]) - nvml
    modelled_cells = set() if total is None else set(total["cell_id"]) - nvml - cluster_cells
    if modelled_cells:
        caption += (
            " For simulated cells the GPU memory is the simulator's MODELLED VRAM "
            "(tokenbench_sim_vram_total_bytes), labelled SIMULATED."
        )
    gpu_present = gpu or any(c.memory.gpu_present for c in run.summary.cells)
    if not have_rss and not gpu:
        if elsewhere and len(elsewhere) == len(run.summary.cells):
            note = "Memory not measured here: the server ran on another host (see the caption)."
            return placeholder(fig_id, title, caption, note)
        return placeholder(fig_id, title, caption, "No memory data in summary.json or timeseries.parquet.")
    with styled():
        fig = new_figure(9.5, 3.0)
        left, right = fig.subplots(1, 2)
        if have_rss:
            _bars(left, cells, values, "rss", colors)
            left.set_title("host RSS")
        else:
            note_axes(left, "host RSS: not measured here" if elsewhere else "no RSS samples")
        if gpu:
            _bars(right, cells, values, "vram", colors)
            gpu_cells = [c for c in cells if math.isfinite(values[c]["peak_vram"])]
            if modelled_cells and modelled_cells.issuperset(gpu_cells):
                right.set_title("GPU memory: SIMULATED (modelled VRAM)")
            elif modelled_cells:
                right.set_title(f"GPU memory ({len(modelled_cells)} cells SIMULATED: modelled VRAM)")
            elif cluster_cells:
                right.set_title(f"GPU memory ({len(cluster_cells)} cells: cluster Prometheus, DCGM)")
            else:
                right.set_title("GPU memory")
        else:
            why = "no VRAM samples" if gpu_present else "no GPU on this host"
            note_axes(right, f"GPU memory: {'not measured here' if elsewhere else why}")
        note = None if gpu else ("GPU memory not measured here" if elsewhere else "no GPU")
        return Figure(fig_id, title, caption, to_svg(fig, fig_id), note=note)
