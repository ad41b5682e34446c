"""The SLO capacity search in the reports: attainment against rate, the capacity found.

Why a view of its own: a capacity is a single number per cell, and a reader trusts it
only when they can see the probes behind it (which rates passed, which failed, how
close each was to the target) and why the search stopped. Cells without a search
(``workload.steps.search``) add nothing to any report.
"""

from __future__ import annotations

from html import escape

from harness.report.data import RunData
from harness.report.figures import cell_label
from harness.report.svg import Figure, new_figure, styled, to_svg
from harness.results import Capacity, CellResult
from harness.search import is_probe, offered_attainment

FIG_ID = "capacity_vs_rate"


def searched(run: RunData) -> list[CellResult]:
    return [c for c in run.summary.cells if c.capacity is not None]


def capacity_text(cap: Capacity) -> str:
    """``12.5 req/s (1,234 out tok/s)``, or why there is no number."""
    if cap.req_s is None:
        return "none passed"
    tok = f", {cap.tok_s:,.0f} out tok/s" if cap.tok_s is not None else ""
    return f"{cap.req_s:g} req/s{tok}"


def capacity_lines(run: RunData) -> list[str]:
    """One plain line per searched cell, for the terminal and Markdown."""
    lines = []
    for cell in searched(run):
        cap = cell.capacity
        assert cap is not None
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in cap.slo.items())
        lines.append(
            f"{cell.cell_id}: {capacity_text(cap)} at attainment >= {cap.target:.0%} of {slo}; "
            f"{len(cap.probes)} probes; stopped: {cap.stop_reason}"
        )
    return lines


def capacity_figure(run: RunData, colors: dict[str, str]) -> Figure:
    """Attainment of every probe against its rate, per cell; the target line; capacities marked."""
    cells = searched(run)
    with styled():
        fig = new_figure(height=3.2)
        ax = fig.subplots()
        targets = set()
        for cell in cells:
            cap = cell.capacity
            assert cap is not None
            probes = sorted(
                (s for s in cell.steps if is_probe(s.step_id) and offered_attainment(s) is not None),
                key=lambda s: s.target,
            )
            color = colors.get(cell.cell_id, "#1f77b4")
            label = cell_label(cell.cell_id, cell.cell_id in run.simulated_cells)
            xs = [s.target for s in probes]
            ax.plot(xs, [offered_attainment(s) for s in probes], "o-", color=color, label=label, lw=1.2, ms=4)
            if cap.req_s is not None:
                ax.axvline(cap.req_s, color=color, ls=":", lw=1.2)
                ax.annotate(
                    f"{cap.req_s:g} req/s",
                    (cap.req_s, cap.target),
                    textcoords="offset points",
                    xytext=(4, -12),
                    color=color,
                    fontsize=8,
                )
            targets.add(cap.target)
        for t in sorted(targets):
            ax.axhline(t, color="#6b7280", ls="--", lw=0.9)
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("SLO attainment")
        ax.set_ylim(-0.02, 1.04)
        ax.legend(loc="lower left")
        svg = to_svg(fig, FIG_ID)
    caption = (
        "Each point is a capacity-search probe (an open-loop Poisson step): the fraction of its "
        "arrivals that met every SLO limit (an arrival never sent counts as a miss). Dashed: the target attainment; dotted: the capacity found "
        "(the highest probed rate at or above the target)."
    )
    return Figure(FIG_ID, "SLO attainment against rate", caption, svg)


def capacity_section(run: RunData, colors: dict[str, str]) -> str:
    """The report's capacity section: a table and the figure; empty when no cell searched."""
    cells = searched(run)
    if not cells:
        return ""
    rows = []
    for cell in cells:
        cap = cell.capacity
        assert cap is not None
        slo = ", ".join(f"{escape(k)} ≤ {v:g} ms" for k, v in cap.slo.items())
        upper = "–" if cap.upper_req_s is None else f"{cap.upper_req_s:g}"
        rows.append(
            f"<tr><td>{escape(cell.cell_id)}</td><td>{escape(capacity_text(cap))}</td><td>{upper}</td>"
            f"<td>{slo}</td><td>{cap.target:.0%}</td><td>{cap.precision:g}</td><td>{len(cap.probes)}</td>"
            f"<td>{escape(cap.stop_reason)}</td></tr>"
        )
    fig = capacity_figure(run, colors)
    return (
        '<section id="capacity"><h2>SLO capacity</h2><table class="summary"><thead><tr><th>cell</th>'
        "<th>capacity</th><th>lowest failing rate</th><th>SLO</th><th>target</th><th>precision</th>"
        f"<th>probes</th><th>stop</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<figure id="{fig.fig_id}" data-figure="{fig.fig_id}"><h3>{escape(fig.title)}</h3>'
        f"{fig.svg}<figcaption>{escape(fig.caption)}</figcaption></figure></section>"
    )
