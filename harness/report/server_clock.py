"""The server-clock self-check in the report: the server's own histograms beside the client's values.

Why a table of its own next to the harness-health one: the harness-health flags
judge the client by its own symptoms (loop lag, CPU); this table judges it
against an outside witness, the server's clock, at the resolution the server's
histogram buckets allow (``harness/telemetry/server_clock.py``).
"""

from __future__ import annotations

from html import escape

from harness.report.columns import Row, fmt_ms
from harness.results import ServerBucket, ServerClock

ROLE_LABELS: dict[str, str] = {"ttft": "TTFT", "itl": "ITL", "e2e": "E2E", "queue": "queue"}


def bucket_text(bucket: ServerBucket | None) -> str:
    """``20–40`` (ms): the server's percentile is somewhere in this bucket; ``> 80`` for +Inf."""
    if bucket is None:
        return "–"
    if bucket.upper_ms is None:
        return f"> {bucket.lower_ms:g}"
    return f"{bucket.lower_ms:g}–{bucket.upper_ms:g}"


def verdict_text(clock: ServerClock) -> str:
    if clock.checked is None:
        return "not checked"
    return "CLIENT SLOWER" if clock.flagged else "agrees"


def clock_rows(rows: list[Row]) -> list[tuple[Row, ServerClock]]:
    return [(row, row.step.server_clock) for row in rows if row.step.server_clock is not None]


def server_clock_section(rows: list[Row]) -> str:
    """HTML: one line per step and role; empty when no step read a server's histograms."""
    body: list[str] = []
    for row, clock in clock_rows(rows):
        verdict = verdict_text(clock)
        badge = "limited" if clock.flagged else "ok"
        notes = "; ".join([*([clock.reason] if clock.reason else []), *clock.notes])
        for role, entry in clock.roles.items():
            body.append(
                f'<tr class="{"limited" if clock.flagged and role == clock.checked else ""}">'
                f'<td class="l">{escape(row.cell.cell_id)}</td><td class="l">{escape(row.load_label)}</td>'
                f'<td class="l">{escape(ROLE_LABELS.get(role, role))}</td><td>{entry.count}</td>'
                f"<td>{escape(str(entry.client_count) if entry.client_count is not None else '–')}</td>"
                f"<td>{escape(bucket_text(entry.p50))}</td><td>{fmt_ms(entry.client_p50_ms)}</td>"
                f"<td>{escape(bucket_text(entry.p90))}</td><td>{fmt_ms(entry.client_p90_ms)}</td>"
                f"<td>{escape(bucket_text(entry.p99))}</td><td>{fmt_ms(entry.client_p99_ms)}</td>"
                + (
                    f'<td class="flag"><span class="badge {badge}">{escape(verdict)}</span></td>'
                    f'<td class="l reasons">{escape(notes)}</td>'
                    if role == clock.checked or (clock.checked is None and role == next(iter(clock.roles)))
                    else "<td></td><td></td>"
                )
                + "</tr>"
            )
        if not clock.roles:
            body.append(
                f'<tr><td class="l">{escape(row.cell.cell_id)}</td><td class="l">{escape(row.load_label)}</td>'
                f'<td class="l" colspan="9">no server histograms read</td><td class="flag">not checked</td>'
                f'<td class="l reasons">{escape("; ".join(clock.notes))}</td></tr>'
            )
    if not body:
        return ""
    return (
        '<section id="server_clock"><h2>Server clock self-check</h2><p class="legend-note">The server\'s own '
        "latency histograms over each step (scraped at the step's edges, warm-up included) beside the "
        "client's values for the same requests (TTFT and E2E from the send). A server percentile is "
        "known to its bucket (ms). CLIENT SLOWER: the client's TTFT p50 (E2E where the server has no TTFT "
        "histogram) is above the server's p50 bucket by more than the expected network time.</p>"
        '<div class="table-wrap"><table id="server_clock_table"><thead><tr><th class="l">cell</th>'
        '<th class="l">load</th><th class="l">metric</th><th>server n</th><th>client n</th>'
        "<th>server p50</th><th>client p50</th><th>server p90</th><th>client p90</th><th>server p99</th>"
        '<th>client p99</th><th>verdict</th><th class="l">notes</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def server_clock_markdown(rows: list[Row]) -> list[str]:
    """Markdown lines: the checked metric per step (server p50 bucket, client p50, verdict)."""
    lines: list[str] = []
    for row, clock in clock_rows(rows):
        entry = clock.roles.get(clock.checked) if clock.checked else None
        if entry is None:
            why = "; ".join(clock.notes) or "no histograms"
            lines.append(f"| {row.cell.cell_id} | {row.load_label} | – | – | – | not checked: {why} |")
            continue
        label = ROLE_LABELS.get(clock.checked or "", clock.checked or "")
        lines.append(
            f"| {row.cell.cell_id} | {row.load_label} | {label} p50 | {bucket_text(entry.p50)} | "
            f"{fmt_ms(entry.client_p50_ms)} | {verdict_text(clock)} (n {entry.count}/{entry.client_count}) |"
        )
    if not lines:
        return []
    return [
        "",
        "**Server clock self-check** (server histogram bucket vs client, ms)",
        "",
        "| cell | load | metric | server | client | verdict (server n/client n) |",
        "|:--|:--|:--|--:|--:|:--|",
        *(line.replace("\n", " ") for line in lines),
    ]
