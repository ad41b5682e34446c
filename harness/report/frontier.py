"""The throughput–latency frontier, and labels placed so they neither overprint nor leave the axes.

Why its own module: the frontier labels every step of every cell, and two
cells' steps of the same name often sit close together ("c16c16"); placing
those labels is a small layout problem of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from harness.report.columns import Row
from harness.report.figures import NO_STEPS, cell_legend, dist_value
from harness.report.svg import Figure, new_figure, placeholder, styled, to_svg

LABEL_OFFSETS: tuple[tuple[float, float, str], ...] = (
    (4, 3, "left"),
    (4, -10, "left"),
    (-4, 3, "right"),
    (-4, -10, "right"),
    (4, 10, "left"),
    (-4, -17, "right"),
)
LABEL_PT = 7.0  # font size of point labels; a character is about 0.6 of it wide


def place_labels(ax: Axes, points: Sequence[tuple[float, float]], labels: Sequence[str]) -> list[int]:
    """Label points without overprinting ("c16c16") or leaving the axes; returns the indices labelled.

    Each label tries a few offsets around its point and takes the first whose
    box overlaps no label already placed and stays inside the axes. A label
    with no free place is left out: its point is still identified by colour,
    and a neighbouring label names the same step.
    """
    fig = ax.figure
    bbox = ax.get_position()
    w_pt = bbox.width * fig.get_figwidth() * 72
    h_pt = bbox.height * fig.get_figheight() * 72
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if not (w_pt > 0 and h_pt > 0 and x1 > x0 and y1 > y0):
        return []
    placed: list[tuple[float, float, float, float]] = []
    done: list[int] = []
    for i, ((x, y), text) in enumerate(zip(points, labels, strict=True)):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        px, py = (x - x0) / (x1 - x0) * w_pt, (y - y0) / (y1 - y0) * h_pt
        width, height = 0.62 * LABEL_PT * len(text), LABEL_PT
        for dx, dy, ha in LABEL_OFFSETS:
            left = px + dx if ha == "left" else px + dx - width
            box = (left, py + dy, left + width, py + dy + height)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= w_pt and box[3] <= h_pt
            clear = all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in placed)
            if inside and clear:
                placed.append(box)
                done.append(i)
                ax.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=(dx, dy),
                    ha=ha,
                    fontsize=LABEL_PT,
                    color="#4b5563",
                    annotation_clip=False,
                )
                break
    return done


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
        to_label: list[tuple[Axes, list[tuple[float, float]]]] = []
        for ax, metric, pct, xlabel in (
            (axes[0], "ttft", "p99", "TTFT p99 (ms)"),
            (axes[1], "tpot", "p50", "TPOT p50 (ms)"),
        ):
            points = [(dist_value(r, metric, pct), r.step.output_tok_s) for r in rows]
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
            finite = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
            if finite:  # headroom so labels at the largest point stay inside the axes
                ax.set_xlim(0, max(p[0] for p in finite) * 1.18 or 1.0)
                ax.set_ylim(0, max(p[1] for p in finite) * 1.15 or 1.0)
            to_label.append((ax, points))
        cells = list(dict.fromkeys(r.cell.cell_id for r in rows))
        extra = [Line2D([], [], color="#111827", ls="--", marker="o", mfc="none", label="Pareto frontier")]
        cell_legend(axes[-1], colors, sims, cells, extra)
        fig.draw_without_rendering()  # settle the layout, so label boxes are measured in the final axes
        for ax, points in to_label:
            place_labels(ax, points, [r.step.step_id for r in rows])
        return Figure(fig_id, title, caption, to_svg(fig, fig_id))
