"""The self-contained HTML compare page.

Same conventions as the run report (``harness.report``): one offline file,
inline CSS, figures as inline SVG rendered by matplotlib with ids prefixed
per figure, no scripts, fonts or images fetched from anywhere. Figures
overlay the runs: latency CDFs per matched step (one line per run) and a
forest plot of relative changes with their confidence intervals.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from harness.atomic import write_text
from harness.gate.comparison import Comparison, KeyComparison, compare_markdown
from harness.report.svg import cell_colors, new_figure, note_axes, styled, to_svg

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#111827;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #e5e7eb}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:right}th{background:#f9fafb}
td:first-child,th:first-child{text-align:left}
.worse{color:#b91c1c;font-weight:600}.better{color:#047857;font-weight:600}
svg.plot{width:100%;height:auto;max-width:1100px}
.note{color:#6b7280;font-size:13px}
"""

LOWER_IS_BETTER = {"ttft", "tpot", "itl", "e2e", "error"}


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x * 100:+.1f}%" if pct else f"{x:.4g}"


def _cdf_figure(comp: Comparison, kc: KeyComparison, colors: dict[str, str], fig_id: str) -> str:
    with styled():
        fig = new_figure(9.0, 2.8)
        axes = fig.subplots(1, 3)
        for ax, fam, title in zip(
            axes, ("ttft", "tpot", "e2e"), ("TTFT", "TPOT", "E2E latency"), strict=True
        ):
            drawn = False
            for run in comp.runs:
                group = run.steps[kc.key]
                values = np.sort(np.concatenate([r.latency(fam) for r in group.repeats]))
                if values.size == 0:
                    continue
                y = np.arange(1, values.size + 1) / values.size
                ax.step(values, y, where="post", color=colors[run.label], label=run.label, linewidth=1.2)
                drawn = True
            if not drawn:
                note_axes(ax, f"no {title} samples")
                continue
            ax.set_title(f"{title} CDF")
            ax.set_xlabel("ms")
            ax.set_ylim(0, 1.0)
        axes[0].set_ylabel("fraction of requests")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
        return to_svg(fig, fig_id)


def _forest_figure(comp: Comparison, kc: KeyComparison, colors: dict[str, str], fig_id: str) -> str:
    with styled():
        fig = new_figure(9.0, 3.2)
        ax = fig.subplots()
        metrics = [d.metric for d in next(iter(kc.deltas.values()), [])]
        n_runs = max(1, len(kc.deltas))
        for j, (label, deltas) in enumerate(kc.deltas.items()):
            xs, ys, lo, hi = [], [], [], []
            for i, d in enumerate(deltas):
                if d.change is None:
                    continue
                xs.append(i + (j - (n_runs - 1) / 2) * 0.2)
                ys.append(d.change * 100)
                lo.append(d.change * 100 - (d.lo * 100 if d.lo is not None else d.change * 100))
                hi.append((d.hi * 100 if d.hi is not None else d.change * 100) - d.change * 100)
            if xs:
                ax.errorbar(
                    xs, ys, yerr=[lo, hi], fmt="o", color=colors[label], label=label, capsize=3, markersize=4
                )
        ax.axhline(0, color="#6b7280", linewidth=0.8)
        ax.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right")
        ax.set_ylabel(f"change vs {comp.runs[0].label} (%)")
        if kc.deltas:
            ax.legend(loc="best")
        return to_svg(fig, fig_id)


def _delta_table(comp: Comparison, kc: KeyComparison) -> str:
    runs = list(kc.deltas)
    head = "".join(f"<th>{_esc(r)}</th><th>change [{comp.confidence:.0%} interval]</th>" for r in runs)
    rows = []
    first = next(iter(kc.deltas.values()), [])
    for i, d0 in enumerate(first):
        cells = [f"<td><code>{_esc(d0.metric)}</code></td><td>{_fmt(d0.ref)}</td>"]
        for r in runs:
            d = kc.deltas[r][i]
            css = ""
            if d.significant and d.change is not None:
                worse = (d.change > 0) == (d.metric.split("_")[0] in LOWER_IS_BETTER)
                css = ' class="worse"' if worse else ' class="better"'
            interval = f"[{_fmt(d.lo, True)}, {_fmt(d.hi, True)}]" if d.lo is not None else ""
            cells.append(f"<td>{_fmt(d.value)}</td><td{css}>{_fmt(d.change, True)} {interval}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ref = _esc(comp.runs[0].label)
    return f"<table><tr><th>metric</th><th>{ref} (reference)</th>{head}</tr>{''.join(rows)}</table>"


def render_compare(comp: Comparison) -> str:
    colors = cell_colors([r.label for r in comp.runs])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tokenbench compare</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>tokenbench compare</h1>",
        "<p>Runs, reference first: "
        + ", ".join(
            f"<code>{_esc(r.label)}</code> ({_esc(', '.join(map(str, r.sources)))})" for r in comp.runs
        )
        + "</p>",
        f'<p class="note">Changes are relative to the reference with {comp.confidence:.0%} bootstrap intervals '
        "over per-request samples (two-stage across repeats); throughput intervals come from per-window rates. "
        "Coloured changes have intervals that exclude zero.</p>",
    ]
    if not comp.keys:
        parts.append("<p><strong>No configuration appears in every run.</strong></p>")
    for n, kc in enumerate(comp.keys):
        parts += [
            f'<h2 id="k{n}">{_esc(kc.label)} <span class="note">[{_esc(kc.key[0])}]</span></h2>',
            _delta_table(comp, kc),
            f'<figure id="fig-cdf-{n}">{_cdf_figure(comp, kc, colors, f"cdf{n}")}'
            "<figcaption>Latency CDFs, one line per run.</figcaption></figure>",
            f'<figure id="fig-forest-{n}">{_forest_figure(comp, kc, colors, f"forest{n}")}'
            "<figcaption>Relative change per metric with its confidence interval.</figcaption></figure>",
        ]
    if comp.mismatches:
        parts.append("<h2>Not matched</h2><ul>")
        parts += [f"<li>({_esc(m.side)}) {_esc(m.describe())}</li>" for m in comp.mismatches]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_compare(comp: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """Write ``compare.html`` and ``compare.md`` into ``out_dir``; returns both paths."""
    html_path, md_path = out_dir / "compare.html", out_dir / "compare.md"
    write_text(html_path, render_compare(comp))
    write_text(md_path, compare_markdown(comp))
    return html_path, md_path
