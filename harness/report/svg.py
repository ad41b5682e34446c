"""Matplotlib figures as inline SVG, safe to paste many times into one HTML page.

Why this module: the report must be one offline file, so figures are inline
SVG rather than PNG files or a JS charting library. Inline SVGs share the
page's id namespace, and matplotlib names its clip paths and markers with
ids such as ``figure_1`` in every file, so each figure's ids are prefixed
with the figure's own id. Text stays text (``svg.fonttype='none'``) with a
generic sans-serif fallback, which renders offline and keeps the file small.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure

RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
}

NO_DATA_COLOR = "#6b7280"


@dataclass(frozen=True)
class Figure:
    """One report figure: a stable id, a caption, and its inline SVG markup.

    ``note`` says why the figure has no data (the slot and caption stay so a
    reader knows what would be here and why it is not).
    """

    fig_id: str
    title: str
    caption: str
    svg: str
    note: str | None = None


@contextmanager
def styled() -> Iterator[None]:
    """Report styling without touching matplotlib's global defaults."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float = 9.0, height: float = 3.4) -> MplFigure:
    """A figure not registered with pyplot: no GUI backend, no global figure manager, nothing to close."""
    return MplFigure(figsize=(width, height), layout="constrained")


def to_svg(fig: MplFigure, fig_id: str) -> str:
    """Render to SVG markup fit for inlining: no XML prolog, no metadata, unique ids, fluid width."""
    buf = io.StringIO()
    with matplotlib.rc_context({**RC, "svg.hashsalt": fig_id}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", fig_id)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(
        r'<svg([^>]*?)\swidth="[^"]*"\sheight="[^"]*"',
        rf'<svg\1 class="plot" role="img" aria-label="{prefix}" preserveAspectRatio="xMidYMid meet"',
        text,
        count=1,
    )
    return text.strip()


def note_axes(ax: Axes, text: str) -> None:
    """Write a 'no data' explanation into an empty panel."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, color=NO_DATA_COLOR, transform=ax.transAxes)


def placeholder(fig_id: str, title: str, caption: str, note: str, height: float = 1.6) -> Figure:
    """A figure slot with no data: still an SVG, saying plainly why it is empty."""
    with styled():
        fig = new_figure(height=height)
        note_axes(fig.subplots(), note)
        return Figure(fig_id, title, caption, to_svg(fig, fig_id), note=note)


def cell_colors(cell_ids: list[str]) -> dict[str, str]:
    """One colour per cell, the same in every figure (tab10, then tab20 for larger sweeps)."""
    cmap = matplotlib.colormaps["tab10" if len(cell_ids) <= 10 else "tab20"]
    n = cmap.N
    return {cid: matplotlib.colors.to_hex(cmap(i % n)) for i, cid in enumerate(cell_ids)}
