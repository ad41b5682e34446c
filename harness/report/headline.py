"""The headline box: which cell is best at each load level, by how much, and whether it is beyond the noise.

Why: a reader opens the report to learn which configuration to pick. The
table answers that only after reading a dozen columns; the headline says it
in words ("vllm-b: TTFT p99 ÷2.2 and +40 % tokens/s at 16 users; no
difference beyond the noise at 1 user").

Rules:

* "Best" is judged within one load level (same kind and target). A
  closed-loop step (16 users) and an open-loop step (4 req/s) are never
  compared with each other.
* The numbers shown are the summary's (the same the table prints), so the
  headline and the table cannot disagree.
* "Beyond the noise" is the gate's decision, not a new one: the runner-up is
  measured against the best with :class:`harness.gate.measure.Measurer` and
  :func:`harness.gate.interval.change_interval` (order-statistic intervals
  for percentiles, bootstrap of window rates for throughput). A percentile
  resting on too few requests has an unbounded interval, so it is never
  called a difference, and the headline says why.
* A capacity search (when the summary carries ``capacity`` per cell) leads.
* Cells are named in the sentences by what differs between them
  (``max_num_seqs=32``, or ``tgi`` when the servers differ), not by cell id:
  the reader is choosing a setting, and the id repeats what all cells share.
  The id stays in the box's tooltip and ``data-best``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.gate.interval import Change, change_interval
from harness.gate.measure import Measure, Measurer
from harness.gate.rundata import StepGroup
from harness.gate.samples import FileStepItl, extract_samples
from harness.report.capacity import capacity_text
from harness.report.columns import Row, format_load
from harness.results import CellResult

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0
INTERVAL_METRICS: tuple[str, ...] = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")


@dataclass(frozen=True)
class HeadlineMetric:
    key: str  # the gate's metric name, also the summary column key where one exists
    label: str
    better: str  # "min" | "max"

    def value(self, row: Row) -> float | None:
        if self.key == "output_tok_s":
            return row.step.output_tok_s
        family, _, stat = self.key.rpartition("_")
        dist = getattr(row.step, f"{family}_ms", None)
        return None if dist is None or dist.count == 0 else float(getattr(dist, stat))


METRICS: tuple[HeadlineMetric, ...] = (
    HeadlineMetric("ttft_p99", "TTFT p99", "min"),
    HeadlineMetric("tpot_p99", "TPOT p99", "min"),
    HeadlineMetric("output_tok_s", "tokens/s", "max"),
)


@dataclass(frozen=True)
class Verdict:
    """The best cell on one metric at one load level, against the runner-up."""

    metric: HeadlineMetric
    best_cell: str
    best_value: float
    runner_cell: str
    runner_value: float
    change: Change | None  # runner-up relative to best, with the gate's interval; None: no records
    thin: bool  # a side's percentile rests on too few requests to bound its interval

    @property
    def beyond_noise(self) -> bool:
        c = self.change
        return c is not None and math.isfinite(c.lo) and math.isfinite(c.hi) and (c.lo > 0 or c.hi < 0)

    @property
    def margin(self) -> str:
        """``÷2.2`` for a latency (runner-up / best), ``+40 %`` for throughput (best / runner-up − 1)."""
        if self.metric.better == "min":
            ratio = self.runner_value / self.best_value if self.best_value > 0 else math.inf
            if not math.isfinite(ratio):
                return "÷∞"
            return f"÷{ratio:.2f}" if ratio < 1.1 else f"÷{ratio:.1f}"  # "÷1.0" would read as "equal"
        if self.runner_value <= 0:
            return "+∞ %"
        gain = 100.0 * (self.best_value / self.runner_value - 1.0)
        return f"+{gain:.1f} %" if gain < 10 else f"+{gain:.0f} %"

    @property
    def phrase(self) -> str:
        if self.metric.better == "min":
            return f"{self.metric.label} {self.margin}"
        return f"{self.margin} {self.metric.label}"

    @property
    def interval(self) -> str:
        """The gate's interval of the runner-up's change relative to the best, in percent."""
        c = self.change
        if c is None or math.isnan(c.rel):
            return "no interval (no per-request records)"
        hi = "+∞" if not math.isfinite(c.hi) else f"{100 * c.hi:+.0f}"
        return f"{self.runner_cell} {100 * c.rel:+.0f} % [{100 * c.lo:+.0f}, {hi} %]"

    @property
    def noise_note(self) -> str:
        if self.beyond_noise:
            return "beyond the noise"
        if self.thin:
            return "within the noise (too few requests to bound this percentile)"
        if self.change is None:
            return "noise unknown (no per-request records)"
        return "within the noise"


@dataclass
class LoadLevel:
    kind: str
    target: float
    cells: list[str]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return format_load(self.kind, self.target)


@dataclass
class Headline:
    levels: list[LoadLevel]
    lines: list[str]
    capacity: list[str] = field(default_factory=list)
    # (cell, step, metric) → the gate's within-run interval of that percentile, for the table's tooltips
    intervals: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # cell id → what differs (cell_names)


def load_levels(rows: list[Row]) -> list[tuple[str, float]]:
    """Distinct load levels: closed-loop by concurrency, then open-loop by rate, each ascending."""
    levels = {(r.step.kind, r.step.target) for r in rows}
    order = {"concurrency": 0, "rate": 1}
    return sorted(levels, key=lambda kt: (order.get(kt[0], 2), kt[0], kt[1]))


def level_of(row: Row) -> tuple[str, float]:
    return (row.step.kind, row.step.target)


class _Noise:
    """Builds one gate ``StepGroup`` per (cell, step) from the run's records, measured once."""

    def __init__(self, records: pd.DataFrame, rows: list[Row], itl: FileStepItl | None = None) -> None:
        self.measurer = Measurer(RESAMPLES, SEED, CONFIDENCE)
        steps = {(r.cell.cell_id, r.step.step_id): (r.cell.cell_id, r.step) for r in rows}
        by_key = {(r.cell.cell_id, r.step.step_id): r for r in rows}
        self.groups: dict[tuple[str, str], StepGroup] = {}
        if records.empty:
            return
        for s in extract_samples(records, steps, None, "run", itl=itl):
            row = by_key[(s.cell_id, s.step_id)]
            key = (s.cell_id, s.step_id)
            self.groups[key] = StepGroup(key=key, cell=row.cell, metrics=row.step, repeats=[s])

    def measure(self, row: Row, metric: str) -> Measure | None:
        group = self.groups.get((row.cell.cell_id, row.step.step_id))
        return None if group is None or not group.repeats else self.measurer.measure(group, metric)


def _verdict(metric: HeadlineMetric, rows: list[Row], noise: _Noise) -> Verdict | None:
    scored = [(v, r) for r in rows if (v := metric.value(r)) is not None and math.isfinite(v)]
    if len({r.cell.cell_id for _, r in scored}) < 2:
        return None
    scored.sort(key=lambda vr: vr[0], reverse=metric.better == "max")
    (best_v, best), (run_v, runner) = scored[0], scored[1]
    b, r = noise.measure(best, metric.key), noise.measure(runner, metric.key)
    change = change_interval(b, r, CONFIDENCE) if b is not None and r is not None else None
    thin = bool((b is not None and b.thin) or (r is not None and r.thin))
    return Verdict(metric, best.cell.cell_id, best_v, runner.cell.cell_id, run_v, change, thin)


def capacity_lines(rows: list[Row], names: dict[str, str] | None = None) -> list[str]:
    """``cell: capacity 12.5 req/s, 1,234 out tok/s`` for every cell whose capacity search ran."""
    names = names or {}
    seen: dict[str, str] = {}
    for row in rows:
        cap = row.cell.capacity
        if cap is not None and row.cell.cell_id not in seen:
            seen[row.cell.cell_id] = capacity_text(cap)
    return [f"{names.get(cid, cid)}: capacity {text}" for cid, text in seen.items()]


def cell_names(rows: list[Row]) -> dict[str, str]:
    """Each cell's name by what differs between the cells: server, backend, model, then settings.

    A field the cells all share says nothing about the choice, so it is left out, and so is a
    setting a cell's backend does not have; when nothing differs (or two cells would read the
    same), the cell id is the name.
    """
    cells = {r.cell.cell_id: r.cell for r in rows}

    def fields(cell: CellResult) -> dict[str, str]:
        out = {"server": cell.server, "backend": cell.backend, "model": cell.model}
        out.update({k: "" if v is None else str(v) for k, v in cell.settings.items()})
        return out

    table = {cid: fields(c) for cid, c in cells.items()}
    keys = list(dict.fromkeys(k for f in table.values() for k in f))
    differing = [k for k in keys if len({f.get(k) for f in table.values()}) > 1]
    if "server" in differing:  # the server's name implies its backend and usually its model
        differing = [k for k in differing if k not in ("backend", "model")]
    names = {
        cid: ", ".join(
            f[k] if k in ("server", "backend", "model") else f"{k}={f[k]}" for k in differing if k in f
        )
        for cid, f in table.items()
    }
    if not differing or len(set(names.values())) < len(names):
        return {cid: cid for cid in cells}
    return names


def _sentences(levels: list[LoadLevel], names: dict[str, str]) -> list[str]:
    """Per winning cell, its wins beyond the noise by level; then the levels with no such difference."""
    wins: dict[str, list[str]] = {}
    quiet: list[str] = []
    for level in levels:
        real = [v for v in level.verdicts if v.beyond_noise]
        if not real and len(level.cells) >= 2:
            quiet.append(level.label)
        by_cell: dict[str, list[str]] = {}
        for v in real:
            by_cell.setdefault(v.best_cell, []).append(v.phrase)
        for cid, phrases in by_cell.items():
            joined = (
                " and ".join(phrases) if len(phrases) < 3 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
            )
            wins.setdefault(cid, []).append(f"{joined} at {level.label}")
    lines = [f"{names.get(cid, cid)}: {'; '.join(parts)}" for cid, parts in wins.items()]
    if quiet:
        lines.append(f"no difference beyond the noise at {', '.join(quiet)}")
    return lines


def build_headline(
    rows: list[Row], records: pd.DataFrame, memo: dict[str, Any] | None = None, itl: FileStepItl | None = None
) -> Headline:
    """The verdicts per load level (only levels where at least two cells ran) and their sentences.

    ``memo`` (a ``RunData.memo``) keeps the measured noise, so the HTML and the Markdown of one
    report (and each shortening of the Markdown) resample the records once, not once each.
    ``itl``: where the chunk stamps are read from when ``records`` holds none (``RunData.itl_source``).
    """
    key = "headline-noise:" + ",".join(f"{r.cell.cell_id}/{r.step.step_id}" for r in rows)
    noise = memo.get(key) if memo is not None else None
    if noise is None:
        noise = _Noise(records, rows, itl)
        if memo is not None:
            memo[key] = noise
    levels: list[LoadLevel] = []
    for kind, target in load_levels(rows):
        mine = [r for r in rows if level_of(r) == (kind, target)]
        cells = list(dict.fromkeys(r.cell.cell_id for r in mine))
        level = LoadLevel(kind, target, cells)
        if len(cells) >= 2:
            level.verdicts = [v for m in METRICS if (v := _verdict(m, mine, noise)) is not None]
        levels.append(level)
    intervals: dict[tuple[str, str, str], tuple[float, float]] = {}
    for row in rows:
        for metric in INTERVAL_METRICS:
            m = noise.measure(row, metric)
            if m is not None and not math.isnan(m.lo):
                intervals[(row.cell.cell_id, row.step.step_id, metric)] = (m.lo, m.hi)
    names = cell_names(rows)
    return Headline(levels, _sentences(levels, names), capacity_lines(rows, names), intervals, names)
