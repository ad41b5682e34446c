"""Figures that compare cells against load: latency, throughput, frontier, CDFs.

Why these views: a reviewer choosing between configurations asks "how does
latency grow with load", "how much throughput do I get", and "what does each
extra token/s cost in latency". Every series keeps its cell's colour across
figures; harness-limited steps are marked so a client bottleneck is never
mistaken for a server one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def single_level(rows: list[Row], kind: str) -> bool:
    """One load level of this kind: a line chart would be one lonely dot per cell."""
    return len({r.step.target for r in rows if r.step.kind == kind}) == 1


def level_bars(
    ax: Axes,
    kind: str,
    per_cell: dict[str, list[Row]],
    colors: dict[str, str],
    values: dict[str, Callable[[Row], float]],
) -> bool:
    """Grouped bars, one group per cell, for a figure whose load axis has a single level.

    Why: with one step per cell the latency-against-load lines collapse to
    dots at one x, overprinting each other; bars with their values written
    on them can be read. Returns whether a harness-limited step is among them.
    """
    cells = ordered(list(per_cell), colors)
    width = 0.8 / max(1, len(values))
    limited = False
    for j, (pct, get) in enumerate(values.items()):
        for i, cid in enumerate(cells):
            row = per_cell[cid][0]
            v = get(row)
            if not math.isfinite(v):
                continue
            x = i + (j - (len(values) - 1) / 2) * width
            hatch = "//" if j else None
            ax.bar(
                x,
                v,
                width * 0.92,
                color=colors[cid],
                alpha=0.55 if j else 1.0,
                hatch=hatch,
                edgecolor="white",
            )
            label = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
            ax.annotate(
                f"{pct} {label}".strip(),
                (x, v),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=7,
            )
            if row.step.harness.limited:
                ax.bar(x, v, width * 0.92, fill=False, edgecolor="#dc2626", linewidth=1.4)
                limited = True
    load = format_load(kind, per_cell[cells[0]][0].step.target) if cells else ""
    ax.set_xticks(range(len(cells)), [c.replace("__", "\n") for c in cells], fontsize=7)
    ax.set_xlabel(f"cell (one load level: {load})")
    ax.grid(axis="x", visible=False)
    return limited


def dist_value(row: Row, metric: str, pct: str) -> float:
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


def ordered(cells: Sequence[str], colors: dict[str, str]) -> list[str]:
    """``cells`` in the run's order (the order of ``colors``), unknown ones last."""
    rank = {c: i for i, c in enumerate(colors)}
    return sorted(dict.fromkeys(cells), key=lambda c: rank.get(c, len(rank)))


def cell_legend(
    ax: Axes,
    colors: dict[str, str],
    sims: set[str],
    cells: list[str],
    extra: list[Line2D],
    inside: bool = False,
) -> None:
    """Cell colours plus line-style keys; outside the axes unless the figure is narrow.

    Cells are listed in the run's order (the colour map's), in every figure, whatever order the
    figure happened to draw them in.
    """
    cells = ordered(cells, colors)
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
    if any(single_level(rows, k) for k in kinds):
        caption += " With a single load level the values are bars per cell: p50 solid, p99 hatched, red edge = harness-limited."
    with styled():
        fig = new_figure(6.4, 3.9 + 2.9 * (len(kinds) - 1))
        axes = fig.subplots(len(kinds), 1, squeeze=False)[:, 0]
        limited = False
        for ax, kind in zip(axes, kinds, strict=True):
            per_cell = _by_cell(rows, kind)
            if single_level(rows, kind):
                limited |= level_bars(
                    ax,
                    kind,
                    per_cell,
                    colors,
                    {p: lambda r, p=p: dist_value(r, metric, p) for p in ("p50", "p99")},
                )
                ax.set_ylabel(f"{name} (ms)")
                top = ax.get_ylim()[1]
                ax.set_ylim(0, top * 1.45 if math.isfinite(top) else None)
                continue
            for cid, rs in per_cell.items():
                xs = [r.step.target for r in rs]
                for pct, style in (("p50", "-"), ("p99", "--")):
                    ys = [dist_value(r, metric, pct) for r in rs]
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
        cell_legend(axes[0], colors, sims, cells, extra, inside=True)
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
            per_cell = _by_cell(rows, kind)
            if single_level(rows, kind):
                level_bars(axes[0], kind, per_cell, colors, {"": lambda r: r.step.output_tok_s})
                level_bars(axes[1], kind, per_cell, colors, {"": lambda r: r.step.request_throughput})
            else:
                for cid, rs in per_cell.items():
                    xs = [r.step.target for r in rs]
                    axes[0].plot(xs, [r.step.output_tok_s for r in rs], marker="o", ms=4, color=colors[cid])
                    axes[1].plot(
                        xs, [r.step.request_throughput for r in rs], marker="o", ms=4, color=colors[cid]
                    )
            for ax, ylabel in zip(axes, ("output tokens/s", "requests/s"), strict=True):
                if not single_level(rows, kind):
                    _load_axis(ax, kind, [r.step.target for r in rows if r.step.kind == kind])
                ax.set_ylabel(ylabel)
                ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        cells = list(dict.fromkeys(r.cell.cell_id for r in rows))
        cell_legend(grid[0][-1], colors, sims, cells, [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))


def top_steps(rows: list[Row]) -> dict[str, Row]:
    """Each cell's highest-load step, of one kind for all cells: closed-loop if any, else open-loop.

    Concurrency and rate are not one scale: 4 req/s is not "more load" than 8 users, so the
    highest step is the highest concurrency (closed-loop steps ordered by users), and only a cell
    with no closed-loop step shows its highest rate (open-loop steps ordered by req/s).
    """
    out: dict[str, Row] = {}
    for cid in dict.fromkeys(r.cell.cell_id for r in rows):
        mine = [r for r in rows if r.cell.cell_id == cid]
        kind = next(
            k
            for k in ("concurrency", "rate", *(r.step.kind for r in mine))
            if any(r.step.kind == k for r in mine)
        )
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
        cell_legend(axes[-1], colors, sims, [cid for cid, _ in series], [])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))
