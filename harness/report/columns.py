"""The summary table's columns, shared by the HTML, Markdown and terminal views.

Why one definition: the three views must agree on what "TTFT p99" means, how
it is formatted and which direction is better, or a CI comment and the HTML
report could disagree about the winner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from harness.results import CellResult, Dist, StepMetrics

Better = Literal["min", "max"] | None


@dataclass(frozen=True)
class Row:
    """One cell × step of the summary table."""

    cell: CellResult
    step: StepMetrics
    simulated: bool

    @property
    def load_label(self) -> str:
        return format_load(self.step.kind, self.step.target)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    value: Callable[[Row], float | None]
    fmt: Callable[[float | None], str]
    better: Better = None


def format_load(kind: str, target: float) -> str:
    number = f"{target:g}"
    if kind == "concurrency":
        return f"{number} user" if target == 1 else f"{number} users"
    return f"{number} req/s"


def fmt_num(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _pct(metric: str, p: str) -> Callable[[Row], float | None]:
    def get(row: Row) -> float | None:
        dist: Dist | None = getattr(row.step, metric)
        return None if dist is None or dist.count == 0 else float(getattr(dist, p))

    return get


def _latency(metric: str, label: str) -> list[Column]:
    return [
        Column(f"{metric}_p50", f"{label} p50 (ms)", _pct(f"{metric}_ms", "p50"), fmt_ms, "min"),
        Column(f"{metric}_p99", f"{label} p99 (ms)", _pct(f"{metric}_ms", "p99"), fmt_ms, "min"),
    ]


LATENCY_COLUMNS: list[Column] = [
    *_latency("ttft", "TTFT"),
    *_latency("itl", "ITL"),
    *_latency("tpot", "TPOT"),
    *_latency("e2e", "E2E"),
]

THROUGHPUT_COLUMNS: list[Column] = [
    Column("req_s", "req/s", lambda r: r.step.request_throughput, lambda v: fmt_num(v, 2), "max"),
    Column("out_tok_s", "output tok/s", lambda r: r.step.output_tok_s, fmt_num, "max"),
    Column("goodput", "goodput (req/s)", lambda r: r.step.goodput_req_s, lambda v: fmt_num(v, 2), "max"),
    Column("error_rate", "errors", lambda r: r.step.error_rate, fmt_pct, "min"),
]

CHECK_COLUMNS: list[Column] = [
    # Achieved, not requested: servers without ignore_eos (TGI) may stop early (harness/lengths.py).
    Column("out_tok_req", "out tok/req", lambda r: r.step.output_tokens_mean, fmt_num),
    Column("token_agreement", "token agreement", lambda r: r.step.token_agreement, fmt_pct),
    Column("chunks_per_token", "chunks/token", lambda r: r.step.chunks_per_token, fmt_ratio),
]

SUMMARY_COLUMNS: list[Column] = [*LATENCY_COLUMNS, *THROUGHPUT_COLUMNS, *CHECK_COLUMNS]

TERMINAL_KEYS: tuple[str, ...] = (
    "ttft_p50",
    "ttft_p99",
    "tpot_p50",
    "tpot_p99",
    "out_tok_s",
    "req_s",
    "out_tok_req",
    "error_rate",
)


def error_classes(step: StepMetrics) -> str:
    """The step's failures by class, most frequent first (``"http_5xx 3, timeout 1"``); "" when none.

    Why next to the rate: "4 % errors" does not say whether to fix a key, a
    timeout or the server. Responses that asked to be retried are counted too,
    since tokenbench never retries them (docs/metrics.md).
    """
    counts = sorted(((n, c) for c, n in step.errors.items() if n), key=lambda t: (-t[0], t[1]))
    text = ", ".join(f"{c} {n}" for n, c in counts)
    if step.retry_after_responses:
        text += f" ({step.retry_after_responses} with Retry-After, not retried)"
    return text


RETRY_NOTE = (
    "responses answered 429/503 with Retry-After; tokenbench counts them and does not retry "
    "(a benchmark that backed off would hide the overload it measures)"
)


def thin_note(col: Column, row: Row) -> str | None:
    """Why a percentile cell cannot be trusted: fewer samples than a bounded order-statistic interval needs.

    A p99 from 32 requests is the maximum of 32 requests; the summary must not
    present it as if it were a tail estimate (same rule as the gate's).
    """
    from harness.gate.orderstat import min_samples

    metric, _, stat = col.key.rpartition("_")
    if not (stat.startswith("p") and stat[1:].isdigit()):
        return None
    dist: Dist | None = getattr(row.step, f"{metric}_ms", None)
    if dist is None or dist.count == 0:
        return None
    n = row.step.requests_ok if metric == "itl" else dist.count  # ITL gaps of one request move together
    need = min_samples(float(stat[1:]) / 100.0)
    if n >= need:
        return None
    return (
        f"{col.label} rests on {n} requests; a bounded 95 % order-statistic interval needs at least "
        f"{need}, so it is no better than the maximum"
    )


def rows_of(cells: list[CellResult], simulated_cells: set[str]) -> list[Row]:
    """Every measured step of every cell, in summary order."""
    return [
        Row(cell=cell, step=step, simulated=cell.simulated or cell.cell_id in simulated_cells)
        for cell in cells
        for step in cell.steps
    ]


Level = tuple[str, float]  # (step kind, target): "best" is only ever judged within one


def level_key(row: Row) -> Level:
    return (row.step.kind, row.step.target)


def best_values(rows: list[Row], columns: list[Column]) -> dict[tuple[Level, str], float]:
    """The best value per (load level, column), only where at least two rows of that level differ.

    Within one level: a closed-loop step at 16 users and an open-loop step at
    4 req/s answer different questions, and the lowest latency of the whole
    table is always the lightest load, which says nothing about the cells.
    Harness-limited steps still compete: they are flagged separately, and
    hiding them would make a suspicious number look like the clear winner.
    """
    best: dict[tuple[Level, str], float] = {}
    levels = dict.fromkeys(level_key(r) for r in rows)
    for level in levels:
        mine = [r for r in rows if level_key(r) == level]
        for col in columns:
            if col.better is None:
                continue
            values = [v for r in mine if (v := col.value(r)) is not None and math.isfinite(v)]
            if len(values) >= 2 and min(values) != max(values):
                best[(level, col.key)] = min(values) if col.better == "min" else max(values)
    return best


def is_best(col: Column, row: Row, best: dict[tuple[Level, str], float]) -> bool:
    value = col.value(row)
    target = best.get((level_key(row), col.key))
    return target is not None and value is not None and math.isclose(value, target, rel_tol=1e-12)
