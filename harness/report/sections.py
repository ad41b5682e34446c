"""HTML sections of the report other than figures: metadata, cells, tables.

Why separate from page assembly: each section is a pure function from run
data to escaped markup, so it can be tested on its own. Everything that
came from a file is escaped, and anything that looks like a secret (API
keys, tokens, passwords in commands or environments) is redacted here,
because the report is meant to be pasted into PRs.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from harness.lengths import cell_output_mean, cell_requested_mean
from harness.redact import REDACTED, is_secret_name, redact_command, redact_mapping
from harness.report.columns import Row
from harness.report.data import RunData, cap_notes, length_notes
from harness.report.health import HEALTH_FIGURES, health_cells
from harness.results import CellResult


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested env.json as ``a.b: value`` pairs, secrets redacted."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if is_secret_name(str(key)):
            pairs.append((name, REDACTED))
        elif isinstance(value, Mapping):
            pairs.extend(flatten(value, f"{name}."))
        elif isinstance(value, list):
            pairs.append((name, ", ".join(str(v) for v in value)))
        else:
            missing = "none detected" if key == "gpu" else "–"
            pairs.append((name, missing if value is None else str(value)))
    return pairs


def _dl(pairs: Iterable[tuple[str, str]]) -> str:
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in pairs)
    return f'<dl class="meta">{items}</dl>'


def banners(run: RunData) -> str:
    parts: list[str] = []
    sims = run.simulated_cells
    if sims:
        parts.append(
            '<div class="banner simulated" id="simulated_banner">SIMULATED: results of '
            f"{escape(', '.join(sorted(sims)))} come from a simulator, not a real server. "
            "They measure the harness, not model serving.</div>"
        )
    caps = cap_notes(run)
    if caps:
        items = "".join(f"<li>{escape(n)}</li>" for n in caps)
        parts.append(
            '<div class="banner incomplete" id="concurrency_cap_banner">CONCURRENCY CAP: '
            f"these steps drove more concurrent streams than the server serves at once.<ul>{items}</ul></div>"
        )
    lengths = length_notes(run)
    if lengths:
        items = "".join(f"<li>{escape(n)}</li>" for n in lengths)
        parts.append(
            '<div class="banner incomplete" id="output_length_banner">OUTPUT LENGTHS DIFFER: these cells '
            "produced a mean output length more than 5 % away from the median of all cells' means (with two cells: from each other), so their "
            f"throughput and latency are not comparable with the others'.<ul>{items}</ul></div>"
        )
    if run.incomplete:
        items = "".join(f"<li>{escape(p)}</li>" for p in run.problems)
        parts.append(
            '<div class="banner incomplete" id="incomplete_banner">INCOMPLETE RUN: this report shows '
            f"whatever was measured before the run stopped.<ul>{items}</ul></div>"
        )
    return "\n".join(parts)


def run_metadata(run: RunData) -> str:
    s = run.summary
    status = "complete" if s.complete and not run.incomplete else "incomplete"
    pairs = [
        ("scenario", s.scenario),
        ("run id", s.run_id),
        ("started", s.started_at),
        ("finished", s.finished_at or "–"),
        ("status", status),
        ("harness version", s.harness_version),
        ("cells", f"{sum(c.status == 'ok' for c in s.cells)} ok / {len(s.cells)} total"),
    ]
    env = flatten(run.env) if run.env else [("environment", "env.json missing")]
    return f'<section id="run_metadata"><h2>Run</h2>{_dl(pairs)}<h3>Environment</h3>{_dl(env)}</section>'


def swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{escape(color)}"></span>'


def _launch(cell: CellResult) -> str:
    return "–" if cell.launch_s is None else f"{cell.launch_s:.1f} s"


def _cell_row(cell: CellResult, color: str, simulated: bool) -> str:
    badge = f'<span class="badge {escape(cell.status)}">{escape(cell.status)}</span>'
    if simulated:
        badge += ' <span class="badge sim">SIMULATED</span>'
    settings = ", ".join(f"{k}={v}" for k, v in cell.settings.items()) or "–"
    command = shlex.join(redact_command(cell.command)) if cell.command else "–"
    env = ", ".join(f"{k}={v}" for k, v in redact_mapping(cell.env).items())
    detail = f"<pre>{escape(command)}</pre>"
    achieved, requested = cell_output_mean(cell), cell_requested_mean(cell)
    if achieved is not None:
        asked = f" (requested {requested:.1f})" if requested is not None else ""
        detail += (
            f'<div class="legend-note" data-output-mean>output: {achieved:.1f} tokens/request{asked}</div>'
        )
    if cell.server_info:
        info = ", ".join(f"{k}={v}" for k, v in cell.server_info.items())
        detail += f'<div class="legend-note">server info: {escape(info)}</div>'
    if env:
        detail += f'<div class="legend-note">env: {escape(env)}</div>'
    if cell.status != "ok" and (cell.error or cell.log_tail):
        tail = "\n".join(cell.log_tail) or "(no log captured)"
        detail += (
            f'<div class="failure"><div class="err">{escape(cell.error or "failed")}</div>'
            f"<details open><summary>server log tail ({len(cell.log_tail)} lines)</summary>"
            f"<pre>{escape(tail)}</pre></details></div>"
        )
    return (
        f'<tr id="cell-{escape(cell.cell_id)}"><td>{swatch(color)}<strong>{escape(cell.cell_id)}</strong><br>{badge}</td>'
        f"<td>{escape(cell.backend)}<br>{escape(cell.version or 'version unknown')}</td>"
        f'<td>{escape(cell.model)}<br><span class="legend-note">{escape(settings)}</span></td>'
        f'<td class="num">{_launch(cell)}</td><td>{detail}</td></tr>'
    )


def cells_section(run: RunData, colors: dict[str, str]) -> str:
    sims = run.simulated_cells
    rows = "".join(
        _cell_row(c, colors.get(c.cell_id, "#374151"), c.cell_id in sims) for c in run.summary.cells
    )
    if not rows:
        rows = '<tr><td colspan="5">No cells recorded in summary.json.</td></tr>'
    return (
        '<section id="cells"><h2>Configurations (cells)</h2><div class="table-wrap"><table class="cells">'
        '<thead><tr><th class="l">cell</th><th class="l">backend</th><th class="l">model / settings</th>'
        '<th>launch → healthy</th><th class="l">exact command</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )


def _num(value: float | None, suffix: str = "") -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1f}{suffix}"


def harness_section(rows: list[Row]) -> str:
    body: list[str] = []
    for row in rows:
        h = row.step.harness
        verdict = (
            '<span class="badge limited">LIMITED</span>' if h.limited else '<span class="badge ok">ok</span>'
        )
        figures = "".join(
            f'<td data-col="{f.key}">{escape(t)}</td>'
            for f, t in zip(HEALTH_FIGURES, health_cells(row), strict=True)
        )
        body.append(
            f'<tr class="{"limited" if h.limited else ""}"><td class="l cell">{escape(row.cell.cell_id)}</td>'
            f'<td class="l">{escape(row.load_label)}</td>{figures}<td>{_num(row.step.achieved_rate)}</td>'
            f'<td class="flag">{verdict}</td><td class="l reasons">{escape("; ".join(h.reasons))}</td></tr>'
        )
    columns = 5 + len(HEALTH_FIGURES)
    if not body:
        body.append(f'<tr><td class="l" colspan="{columns}">No measured steps.</td></tr>')
    heads = "".join(f"<th>{escape(f.label)}</th>" for f in HEALTH_FIGURES)
    return (
        '<section id="harness_health"><h2>Harness self-diagnosis</h2><p class="legend-note">Was the load generator '
        "the bottleneck? High event-loop lag, a saturated client CPU or many coalesced chunks mean the client, "
        "not the server, set these numbers; such steps are flagged LIMITED and ringed in red in the figures. "
        "Connections: with prewarm every user's connection was opened and verified before the step's clock "
        "started, so connects in the window should be 0; with cold each user's first request connected inside "
        "the step (connect times are those requests'; gRPC channels connect inside the call, so theirs are –). "
        "Users held: in closed loop, the mean requests open between the first and last measured send over the "
        "users asked for; under 97.5% the server saw less load than asked (the rest is each user's time from a "
        "response's end to its next send).</p>"
        '<div class="table-wrap"><table id="harness_table"><thead><tr><th class="l">cell</th><th class="l">load</th>'
        f'{heads}<th>achieved rate (req/s)</th><th>verdict</th><th class="l">reasons</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )
