"""The self-contained HTML compare page.

Same conventions as the run report (``harness.report``): one offline file,
inline CSS, figures as inline SVG rendered by matplotlib with ids prefixed
per figure, no scripts, fonts or images fetched from anywhere. Figures
overlay the runs: latency CDFs per matched step (one line per run) and a
forest plot of relative changes with their confidence intervals.

The page leads with a one-line verdict (the gate's, per run, under the
policy), then what differs between the runs' configurations. Change cells
are coloured by the policy rule's verdict (regression red, improvement
green, inconclusive amber); metrics the policy has no rule for stay plain.
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
.unsure{color:#b45309}.thin{color:#b45309;font-size:12px}
.verdict{font-size:16px;padding:8px 12px;border-left:4px solid #6b7280;background:#f9fafb}
.verdict.regression{border-color:#b91c1c}.verdict.pass{border-color:#047857}
.verdict.inconclusive{border-color:#b45309}
svg.plot{width:100%;height:auto;max-width:1100px}
.note{color:#6b7280;font-size:13px}
"""

VERDICT_CSS = {"regression": "worse", "improvement": "better", "inconclusive": "unsure"}


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is not None and math.isinf(x):
        return "+∞ (unbounded)" if x > 0 else "−∞"
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
        # The reference's label can be a long run id: as a y label it outgrew the axes and was clipped.
        ax.set_ylabel("change (%)")
        ax.set_title(f"change vs {comp.runs[0].label} (reference)", loc="left", fontsize=9, wrap=True)
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
            css, title = "", "no policy rule for this metric"
            if d.verdict is not None:
                title = f"policy {d.rule}: {d.verdict}"
                if d.verdict in VERDICT_CSS:
                    css = f' class="{VERDICT_CSS[d.verdict]}"'
            interval = f"[{_fmt(d.lo, True)}, {_fmt(d.hi, True)}]" if d.lo is not None else ""
            thin = [n for n in d.notes if n.startswith("too few samples")]
            mark = f' <span class="thin" title="{_esc(thin[0])}">too few samples</span>' if thin else ""
            cells.append(
                f'<td>{_fmt(d.value)}</td><td{css} title="{_esc(title)}">{_fmt(d.change, True)} {interval}{mark}</td>'
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ref = _esc(comp.runs[0].label)
    notes = sorted({n for ds in kc.deltas.values() for d in ds for n in d.notes if n.startswith("too few")})
    methods = sorted({d.method for ds in kc.deltas.values() for d in ds if d.method})
    foot = "".join(f'<p class="note">{_esc(n)}</p>' for n in methods + notes)
    return f"<table><tr><th>metric</th><th>{ref} (reference)</th>{head}</tr>{''.join(rows)}</table>{foot}"


def _verdict_css(comp: Comparison) -> str:
    order = ("regression", "inconclusive", "improvement", "pass")
    verdicts = [r.verdict for r in comp.results.values()]
    return next((v for v in order if v in verdicts), "")


def _config_section(comp: Comparison) -> list[str]:
    ref = _esc(comp.runs[0].label)
    parts = ['<h2 id="config">Configuration differences</h2>']
    for label, changes in comp.config.items():
        if not changes:
            parts.append(f"<p><code>{_esc(label)}</code>: same configuration as <code>{ref}</code>.</p>")
            continue
        rows = "".join(
            f"<tr><td>{_esc(c.path)}</td><td>{_esc(c.ref)}</td><td>{_esc(c.other)}</td></tr>" for c in changes
        )
        parts.append(
            f"<h3><code>{_esc(label)}</code> vs <code>{ref}</code></h3>"
            f"<table><tr><th>field</th><th>{ref} (reference)</th><th>{_esc(label)}</th></tr>{rows}</table>"
        )
    return parts


def _tolerances(comp: Comparison) -> str:
    if comp.policy is None:
        return "no policy"
    shown = []
    for metric, rule in comp.policy.rules.items():
        for name in ("max_increase", "max_decrease"):
            value = getattr(rule, name)
            if value is not None:
                shown.append(f"{metric} {name} {value * 100:g}%")
    return ", ".join(shown) or "no relative rules"


def render_compare(comp: Comparison) -> str:
    colors = cell_colors([r.label for r in comp.runs])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tokenbench compare</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>tokenbench compare</h1>",
        f'<p class="verdict {_verdict_css(comp)}" id="verdict"><strong>{_esc(comp.verdict_line())}</strong></p>',
        "<p>Runs, reference first: "
        + ", ".join(
            f"<code>{_esc(r.label)}</code> ({_esc(', '.join(map(str, r.sources)))})" for r in comp.runs
        )
        + "</p>",
        f'<p class="note">Changes are relative to the reference with {comp.confidence:.0%} intervals: '
        "order-statistic (distribution-free) for percentiles, bootstrap over per-window rates for throughput, "
        "and the spread between repeats (pooled) when the runs hold repeats. Colours are the gate's verdict "
        f"under the policy's tolerance ({_esc(_tolerances(comp))}): red regression, green improvement, amber "
        "inconclusive; uncoloured changes are within tolerance or have no rule.</p>",
    ]
    parts += [f'<p class="note">Note: {_esc(n)}</p>' for n in comp.notes]
    parts += _config_section(comp)
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
