"""The per-step harness-health figures, shared by the HTML, Markdown and terminal views.

Why one list: every report of every run carries the same self-diagnosis
(loop lag, client CPU, coalesced chunks, connections and connect times,
and in closed loop the share of its users' requests really held open), so
a CI comment, the terminal and the HTML cannot disagree about whether the
client was in the way. Each figure reads the step's ``HarnessHealth`` and
formats it; "–" means not measured (older runs, gRPC connect times).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.report.columns import Row, fmt_ms, fmt_pct
from harness.results import HarnessHealth


@dataclass(frozen=True)
class HealthFigure:
    key: str
    label: str
    text: Callable[[HarnessHealth], str]


def _fine_ms(value: float | None) -> str:
    """Connect times are often well under a millisecond on a LAN: keep two decimals below 10 ms."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2f}" if abs(value) < 10 else fmt_ms(value)


def _cpu(h: HarnessHealth) -> str:
    v = h.client_cpu_pct
    return "–" if v is None or not math.isfinite(v) else f"{v:.1f}%"


def _connections(h: HarnessHealth) -> str:
    if h.connections is None:
        return "–"
    if h.connections == "prewarm":
        took = "" if h.prewarm_s is None else f" {h.prewarm_s:.2f} s"
        failed = f", {h.prewarm_failures} failed" if h.prewarm_failures else ""
        return f"prewarm{took}{failed}"
    return h.connections


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _lag(h: HarnessHealth) -> str:
    return f"{fmt_ms(h.loop_lag_p99_ms)} / {fmt_ms(h.loop_lag_max_ms)}"


def _connect_times(h: HarnessHealth) -> str:
    if h.connect_p50_ms is None:
        return "–"
    return " / ".join(_fine_ms(v) for v in (h.connect_p50_ms, h.connect_p99_ms, h.connect_max_ms))


HEALTH_FIGURES: list[HealthFigure] = [
    HealthFigure("loop_lag", "loop lag p99 / max (ms)", _lag),
    HealthFigure("client_cpu", "client CPU", _cpu),
    HealthFigure("coalesced", "coalesced chunks", lambda h: fmt_pct(h.coalesced_chunk_fraction)),
    HealthFigure("connections", "connections", _connections),
    HealthFigure("connects", "connects in window", lambda h: _count(h.connects)),
    HealthFigure("connect_ms", "connect p50 / p99 / max (ms)", _connect_times),
    HealthFigure("held", "users held (closed loop)", lambda h: fmt_pct(h.held_fraction)),
]


def health_cells(row: Row) -> list[str]:
    """The figures of one cell × step, in ``HEALTH_FIGURES`` order."""
    return [f.text(row.step.harness) for f in HEALTH_FIGURES]


def verdict(row: Row) -> str:
    return "LIMITED" if row.step.harness.limited else "ok"
