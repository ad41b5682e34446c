"""The interval of a relative change run/baseline − 1: within-run noise, and between-run noise when repeats exist.

Why two sources: a rerun of the identical configuration moved ``ci-sim`` c4
``ttft_p95`` by +20 % while the within-run interval was [+12, +34 %]. The
interval was right about sampling noise and silent about what changes from
one run to the next (CPU contention, page cache, batch phase). Only repeats
can measure that, so:

* **Within run** (always): for percentiles, the two sides' order-statistic
  intervals combined on the log scale by MOVER (Zou & Donner's "method of
  variance estimates recovery"), which keeps the asymmetry of each side and
  lets an unbounded side make the change unbounded; for means and window
  rates, the bootstrap distribution of the ratio.
* **Between runs** (when the two sides hold ≥ 3 repeats together): each
  repeat's own value, on the log scale; the variances of both sides pooled
  (one run-to-run spread, df = R_base + R_run − 2); a Student t interval of
  the difference of logs around the pooled point. A baseline saved from three
  runs thus lets a single CI run be judged with between-run noise.

The reported interval is the wider of the two on each side, so a lucky small
spread between a few repeats never claims more precision than one run has.

* **Assumed run-to-run noise** (``run_to_run_noise`` in the policy) when too
  few repeats exist to measure it: an A/A rerun of real vLLM on a busy 2-core
  machine moved single-run values by more than their within-run intervals, and
  the gate called it a regression. Without repeats that spread is unknowable,
  so the policy states it (``python -m harness.gate.aa`` prints the spread it
  observes). It widens only the end of the interval a *regression* or an
  *improvement* is read from (``Change.alarm_lo`` / ``alarm_hi``), never the end
  a *pass* is read from: an assumption may stop the gate from crying wolf, but
  it must not make every single-run throughput rule unpassable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from harness.gate.measure import Measure
from harness.gate.orderstat import t_quantile
from harness.gate.stats import relative_diff


@dataclass(frozen=True)
class Change:
    """Relative change with its interval; NaN where it cannot be computed."""

    rel: float
    lo: float
    hi: float
    method: str  # "within-run" | "between-run"
    df: int = 0  # degrees of freedom of the between-run spread (0: none)
    notes: list[str] = field(default_factory=list)
    assumed_noise: float = 0.0  # the policy's run_to_run_noise, applied (0: not applied)
    alarm_lo: float = math.nan  # lo/hi widened by the assumed noise: what regression/improvement read
    alarm_hi: float = math.nan

    def __post_init__(self) -> None:
        # Frozen: without an assumption the alarm interval is the measured one.
        if math.isnan(self.alarm_lo):
            object.__setattr__(self, "alarm_lo", self.lo)
        if math.isnan(self.alarm_hi):
            object.__setattr__(self, "alarm_hi", self.hi)

    @property
    def between_runs(self) -> bool:
        return self.method == "between-run"

    def describe(self) -> str:
        if self.between_runs:
            return f"between-run interval (repeats pooled, df={self.df})"
        if self.assumed_noise > 0:
            return (
                "within-run interval; a regression must also clear the policy's assumed run-to-run "
                f"noise ({self.assumed_noise:.1%})"
            )
        return "within-run interval only (one repeat per side)"


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _within(b: Measure, r: Measure, confidence: float) -> tuple[float, float, float]:
    """(d, lower deviation, upper deviation) of d = ln(run) − ln(base): MOVER or bootstrap."""
    lr, lb = math.log(r.point), math.log(b.point)
    d = lr - lb
    if not (b.order_statistic and r.order_statistic):
        _, lo, hi = relative_diff(b.boot, r.boot, b.point, r.point, confidence)
        if math.isnan(lo):
            return d, math.inf, math.inf
        return d, max(0.0, d - _log(1.0 + lo)), max(0.0, _log(1.0 + hi) - d)
    down = math.hypot(max(0.0, lr - _log(r.lo)), max(0.0, _log(b.hi) - lb))
    up = math.hypot(max(0.0, _log(r.hi) - lr), max(0.0, lb - _log(b.lo)))
    return d, down, up


def _between(b: Measure, r: Measure, confidence: float) -> tuple[float, int] | None:
    """Half-width of the between-run t interval of d, and its df; None without enough repeats."""
    vb = np.array(b.per_repeat, dtype=np.float64)
    vr = np.array(r.per_repeat, dtype=np.float64)
    if vb.size + vr.size < 3 or not (np.all(vb > 0) and np.all(vr > 0)):
        return None
    lb, lr = np.log(vb), np.log(vr)
    df = int(vb.size + vr.size - 2)
    ss = float(((lb - lb.mean()) ** 2).sum() + ((lr - lr.mean()) ** 2).sum())
    se = math.sqrt(ss / df) * math.sqrt(1.0 / vb.size + 1.0 / vr.size)
    return t_quantile(confidence, df) * se, df


def _assumed_half(b: Measure, r: Measure, confidence: float, noise: float) -> float:
    """Half-width on the log scale that a relative run-to-run spread ``noise`` gives the difference."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return z * noise * math.sqrt(1.0 / max(1, b.repeats) + 1.0 / max(1, r.repeats))


def change_interval(b: Measure, r: Measure, confidence: float, assumed_noise: float = 0.0) -> Change:
    """The change of ``r`` relative to ``b`` with the honest interval (see the module docstring).

    ``assumed_noise`` (the policy's ``run_to_run_noise``) applies only when the
    between-run spread cannot be measured, and only to ``alarm_lo``/``alarm_hi``.
    """
    notes = [m.thin_note(side) for side, m in (("baseline", b), ("run", r)) if m.thin]
    if not (b.point > 0) or math.isnan(r.point):
        return Change(math.nan, math.nan, math.nan, "within-run", notes=notes)
    if not (r.point > 0):
        rel, lo, hi = relative_diff(b.boot, r.boot, b.point, r.point, confidence)
        return Change(rel, lo, hi, "within-run", notes=notes)
    d, down, up = _within(b, r, confidence)
    method, df = "within-run", 0
    between = _between(b, r, confidence)
    if between is not None:
        half, df = between
        down, up, method = max(down, half), max(up, half), "between-run"
    lo, hi = _bounds(d, down, up)
    if between is not None or assumed_noise <= 0:
        return Change(math.expm1(d), lo, hi, method, df, notes)
    half = _assumed_half(b, r, confidence, assumed_noise)
    alarm_lo, alarm_hi = _bounds(d, math.hypot(down, half), math.hypot(up, half))
    return Change(math.expm1(d), lo, hi, method, df, notes, assumed_noise, alarm_lo, alarm_hi)


def _bounds(d: float, down: float, up: float) -> tuple[float, float]:
    """Relative bounds of a log-scale difference ``d`` with deviations down/up (inf: unbounded)."""
    lo = math.expm1(d - down) if math.isfinite(down) else -1.0
    hi = math.expm1(min(d + up, 700.0)) if math.isfinite(up) else math.inf
    return lo, hi
