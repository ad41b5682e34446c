"""Figures that compare cells against load: latency, throughput, frontier, CDFs.

Why these views: a reviewer choosing between configurations asks "how does
latency grow with load", "how much throughput do I get", and "what does each
extra token/s cost in latency". Every series keeps its cell's colour across
figures; harness-limited steps are marked so a client bottleneck is never
mistaken for a server one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from harness.report.columns import Row, format_load
from harness.report.svg import Figure, new_figure, placeholder, styled, to_svg

KIND_AXIS = {"concurrency": "concurrency (users)", "rate": "offered rate (req/s)"}
NO_STEPS = "No measured steps: the summary has no step metrics (failed or incomplete run)."


def cell_label(cell_id: str, simulated: bool) -> str:
    return f"{cell_id} (SIMULATED)" if simulated else cell_id


def _kinds(rows: list[Row]) -> list[str]:
    return [k for k in ("concurrency", "rate") if any(r.step.kind == k for r in rows)]


def _by_cell(rows: list[Row], kind: str) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in rows:
        if row.step.kind == kind:
            out.setdefault(row.cell.cell_id, []).append(row)
    return {cid: sorted(rs, key=lambda r: r.step.target) for cid, rs in out.items()}


def _load_axis(ax: Axes, kind: str, targets: Sequence[float]) -> None:
    """Ticks at the measured load levels; log2 spacing when they span a wide range (1, 2, 4 … 64)."""
    ax.set_xlabel(KIND_AXIS[kind])
    ticks = sorted({t for t in targets if t > 0})
    if not ticks:
        return
    if max(ticks) / min(ticks) >= 8:
        ax.set_xscale("log", base=2)
    elif len(ticks) == 1:
        ax.set_xlim(0, 2 * ticks[0])
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def _dist_value(row: Row, metric: str, pct: str) -> float:
    dist = getattr(row.step, f"{metric}_ms")
    return math.nan if dist is None or dist.count == 0 else float(getattr(dist, pct))


def _mark_limited(ax: Axes, xs: list[float], ys: list[float], rows: list[Row]) -> bool:
    hit = [
        (x, y) for x, y, r in zip(xs, ys, rows, strict=True) if r.step.harness.limited and math.isfinite(y)
    ]
    if hit:
        ax.scatter(
            *zip(*hit, strict=True), s=90, facecolors="none", edgecolors="#dc2626", linewidths=1.4, zorder=5
        )
    return bool(hit)


def _legend(
    ax: Axes,
    colors: dict[str, str],
    sims: set[str],
    cells: list[str],
    extra: list[Line2D],
    inside: bool = False,
) -> None:
    """Cell colours plus line-style keys; outside the axes unless the figure is narrow."""
    handles = [Line2D([], [], color=colors[c], marker="o", label=cell_label(c, c in sims)) for c in cells]
    if inside:
        ax.legend(handles=handles + extra, loc="upper left", fontsize=7.5)
    else:
        ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def latency_vs_load(
    rows: list[Row], metric: str, name: str, colors: dict[str, str], sims: set[str]
) -> Figure:
    """p50 (solid) and p99 (dashed) of one latency metric against load, one line per cell."""
    fig_id = f"{metric}_vs_load"
    title = f"{name} against load"
    caption = (
        f"{name} p50 (solid) and p99 (dashed) per load step, one colour per cell. "
        "Red rings mark steps where the load generator itself was the bottleneck."
    )
    kinds = _kinds(rows)
    if not kinds:
        return placeholder(fig_id, title, caption, NO_STEPS)
    with styled():
        fig = new_figure(6.4, 3.9 + 2.9 * (len(kinds) - 1))
        axes = fig.subplots(len(kinds), 1, squeeze=False)[:, 0]
        limited = False
        for ax, kind in zip(axes, kinds, strict=True):
            per_cell = _by_cell(rows, kind)
            for cid, rs in per_cell.items():
                xs = [r.step.target for r in rs]
                for pct, style in (("p50", "-"), ("p99", "--")):
                    ys = [_dist_value(r, metric, pct) for r in rs]
                    ax.plot(xs, ys, style, marker="o", ms=4, color=colors[cid])
                    limited |= _mark_limited(ax, xs, ys, rs)
            _load_axis(ax, kind, [r.step.target for r in rows if r.step.kind == kind])
            ax.set_ylabel(f"{name} (ms)")
            top = ax.get_ylim()[1]
            ax.set_ylim(0, top * 1.45 if math.isfinite(top) else None)  # headroom for the inside legend
        extra = [
            Line2D([], [], color="#374151", ls="-", label="p50"),
            Line2D([], [], color="#374151", ls="--", label="p99"),
        ]
        if limited:
            extra.append(
                Line2D([], [], ls="", marker="o", mfc="none", mec="#dc2626", ms=9, label="harness-limited")
            )
        cells = list(dict.fromkeys(r.cell.cell_id for r in rows))
        _legend(axes[0], colors, sims, cells, extra, inside=True)
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def throughput_vs_load(rows: list[Row], colors: dict[str, str], sims: set[str]) -> Figure:
    fig_id = "throughput_vs_load"
    title = "Throughput against load"
    caption = "Output tokens/s (left) and completed requests/s (right) per load step, one line per cell."
    kinds = _kinds(rows)
    if not kinds:
        return placeholder(fig_id, title, caption, NO_STEPS)
    with styled():
        fig = new_figure(9.5, 3.0 * len(kinds))
        grid = fig.subplots(len(kinds), 2, squeeze=False)
        for axes, kind in zip(grid, kinds, strict=True):
            for cid, rs in _by_cell(rows, kind).items():
                xs = [r.step.target for r in rs]
                axes[0].plot(xs, [r.step.output_tok_s for r in rs], marker="o", ms=4, color=colors[cid])
                axes[1].plot(xs, [r.step.request_throughput for r in rs], marker="o", ms=4, color=colors[cid])
            for ax, ylabel in zip(axes, ("output tokens/s", "requests/s"), strict=True):
                _load_axis(ax, kind, [r.step.target for r in rows if r.step.kind == kind])
                ax.set_ylabel(ylabel)
                ax.set_ylim(bottom=0)
        cells = list(dict.fromkeys(r.cell.cell_id for r in rows))
        _legend(grid[0][-1], colors, sims, cells, [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower x (latency) and higher y (throughput) are better.

    Sorted by latency, so the frontier can be drawn as a line.
    """
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    order = sorted(finite, key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def frontier(rows: list[Row], colors: dict[str, str], sims: set[str]) -> Figure:
    """Throughput vs latency for every step of every cell, with the Pareto frontier across cells."""
    fig_id = "throughput_latency_frontier"
    title = "Throughput–latency frontier"
    caption = (
        "Each point is one load step (labelled), one series per cell. The dashed black line joins the "
        "Pareto-optimal steps across all cells: no other step has both lower latency and higher output tokens/s."
    )
    if not rows:
        return placeholder(fig_id, title, caption, NO_STEPS)
    with styled():
        fig = new_figure(9.5, 3.6)
        axes = fig.subplots(1, 2)
        for ax, metric, pct, xlabel in (
            (axes[0], "ttft", "p99", "TTFT p99 (ms)"),
            (axes[1], "tpot", "p50", "TPOT p50 (ms)"),
        ):
            points = [(_dist_value(r, metric, pct), r.step.output_tok_s) for r in rows]
            for cid in dict.fromkeys(r.cell.cell_id for r in rows):
                idx = [i for i, r in enumerate(rows) if r.cell.cell_id == cid]
                idx.sort(key=lambda i: (rows[i].step.kind, rows[i].step.target))
                ax.plot(
                    [points[i][0] for i in idx],
                    [points[i][1] for i in idx],
                    "-o",
                    ms=4,
                    lw=0.9,
                    alpha=0.85,
                    color=colors[cid],
                )
                for i in idx:
                    if math.isfinite(points[i][0]):
                        ax.annotate(
                            rows[i].step.step_id,
                            points[i],
                            textcoords="offset points",
                            xytext=(4, 3),
                            fontsize=7,
                            color="#4b5563",
                        )
            front = pareto_front(points)
            if front:
                ax.plot(
                    [points[i][0] for i in front],
                    [points[i][1] for i in front],
                    "--",
                    color="#111827",
                    lw=1.1,
                    zorder=4,
                )
                ax.scatter(
                    [points[i][0] for i in front],
                    [points[i][1] for i in front],
                    s=70,
                    facecolors="none",
                    edgecolors="#111827",
                    linewidths=1.1,
                    zorder=5,
                )
            ax.set_xlabel(xlabel)
            ax.set_ylabel("output tokens/s")
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
        cells = list(dict.fromkeys(r.cell.cell_id for r in rows))
        extra = [Line2D([], [], color="#111827", ls="--", marker="o", mfc="none", label="Pareto frontier")]
        _legend(axes[-1], colors, sims, cells, extra)
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def top_steps(rows: list[Row]) -> dict[str, Row]:
    """Each cell's highest-load step (within the kind of its last step)."""
    out: dict[str, Row] = {}
    for cid in dict.fromkeys(r.cell.cell_id for r in rows):
        mine = [r for r in rows if r.cell.cell_id == cid]
        kind = mine[-1].step.kind
        out[cid] = max((r for r in mine if r.step.kind == kind), key=lambda r: r.step.target)
    return out


def latency_cdf(rows: list[Row], per_req: pd.DataFrame, colors: dict[str, str], sims: set[str]) -> Figure:
    """Empirical CDFs of TTFT and E2E at each cell's highest load step, from the raw records."""
    fig_id = "latency_cdf"
    title = "Latency distributions at the highest load"
    tops = top_steps(rows)
    where = ", ".join(f"{cid} @ {format_load(r.step.kind, r.step.target)}" for cid, r in tops.items())
    caption = (
        "Empirical CDF of per-request TTFT and E2E (successful, non-warm-up requests) at each cell's "
        f"highest load step ({where or 'none'}), computed from records.parquet."
    )
    series: list[tuple[str, pd.DataFrame]] = []
    for cid, row in tops.items():
        sel = per_req[(per_req["cell_id"] == cid) & (per_req["step_id"] == row.step.step_id)]
        if not sel.empty:
            series.append((cid, sel))
    if not series:
        return placeholder(fig_id, title, caption, "No per-request records for the highest load steps.")
    with styled():
        fig = new_figure(9.5, 3.2)
        axes = fig.subplots(1, 2)
        for ax, col, label in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "e2e_ms", "E2E (ms)")):
            spread: list[float] = []
            for cid, sel in series:
                values = np.sort(sel[col].dropna().to_numpy(dtype=float))
                if values.size == 0:
                    continue
                spread += [float(values[0]), float(values[-1])]
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=colors[cid])
            if spread and min(spread) > 0 and max(spread) / min(spread) > 50:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("fraction of requests")
            ax.set_ylim(0, 1.02)
            for q in (0.5, 0.99):
                ax.axhline(q, color="#9ca3af", lw=0.6, ls=":")
        _legend(axes[-1], colors, sims, [cid for cid, _ in series], [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))
