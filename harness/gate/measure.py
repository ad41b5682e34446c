"""One metric of one step, measured with its within-run interval and per-repeat values.

Why separate from the verdict: ``gate`` and ``compare`` both need "value of
metric M for step S, with noise", and they must compute it identically.

Two kinds of noise are kept apart. The *within-run* interval is sampling
noise of one measurement: an order-statistic (distribution-free) interval
for percentiles, a bootstrap interval for means and window rates (each
(step, family) resampled once with a seed derived from the policy seed and
the step's key, so results do not depend on rule order). The *per-repeat*
values are the metric computed on each repeat alone; their spread is the
between-run noise that :mod:`harness.gate.interval` uses when repeats exist.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from harness.gate.orderstat import min_samples, quantile_interval, stat_quantile
from harness.gate.rundata import StepGroup
from harness.gate.samples import LATENCY_FAMILIES, RATE_METRICS
from harness.gate.stats import STATS, Groups, bootstrap_stats, make_groups, percentile_interval, point_stat


@dataclass(frozen=True)
class Measure:
    """Point value, its within-run interval, per-repeat values, and the sample sizes behind them."""

    metric: str
    point: float
    boot: np.ndarray
    n_requests: int  # successful measured requests (all repeats, before downsampling)
    n_total: int  # all measured requests
    repeats: int
    errors: int = 0
    lo: float = math.nan  # within-run interval of ``point`` (±inf: the sample cannot bound it)
    hi: float = math.nan
    per_repeat: tuple[float, ...] = ()
    n_samples: int = 0  # observations the interval rests on (ITL: requests, not gaps)
    needed: int | None = None  # samples a bounded percentile interval needs, when this one is not bounded

    @property
    def stat(self) -> str:
        return split_metric(self.metric)[1]

    @property
    def order_statistic(self) -> bool:
        """A latency percentile (or min/max): its within-run interval comes from order statistics."""
        return self.metric.split("_")[0] in LATENCY_FAMILIES and stat_quantile(self.stat) is not None

    @property
    def tail(self) -> bool:
        """p90 and above (and max): the statistics that move most between runs."""
        q = stat_quantile(self.stat)
        return q is not None and q >= 0.9 and self.metric.split("_")[0] in LATENCY_FAMILIES

    @property
    def thin(self) -> bool:
        """A percentile whose order-statistic interval is unbounded: too few samples to bound it."""
        return self.needed is not None

    def thin_note(self, side: str) -> str:
        return (
            f"too few samples: {side} {self.metric} rests on {self.n_samples} requests; a bounded "
            f"order-statistic interval needs at least {self.needed}, so it is no better than the maximum"
        )


def split_metric(metric: str) -> tuple[str, str]:
    """``ttft_p95`` → (``ttft``, ``p95``); rates and ``error_rate`` → (name, ``mean``)."""
    family, _, stat = metric.rpartition("_")
    if family in LATENCY_FAMILIES and stat in STATS:
        return family, stat
    if metric in RATE_METRICS or metric == "error_rate":
        return metric, "mean"
    raise ValueError(f"unknown metric {metric!r}")


class Measurer:
    """Caches bootstrap replicates per (side, step, family) so each is computed once."""

    def __init__(self, resamples: int, seed: int, confidence: float = 0.95) -> None:
        self.resamples = resamples
        self.seed = seed
        self.confidence = confidence
        self._cache: dict[tuple[int, str, str, str], dict[str, np.ndarray]] = {}

    def _rng(self, group: StepGroup, family: str) -> np.random.Generator:
        salt = zlib.crc32(f"{group.key[0]}/{group.key[1]}/{family}".encode())
        return np.random.default_rng([self.seed, salt])

    def samples(self, group: StepGroup, family: str) -> Groups:
        """Per-repeat samples of a family, as bootstrap groups."""
        if family in LATENCY_FAMILIES:
            return make_groups([r.latency(family) for r in group.repeats])
        if family in RATE_METRICS:
            return make_groups(
                [np.asarray(r.windows.get(family, []), dtype=np.float64) for r in group.repeats]
            )
        if family == "error_rate":
            return make_groups([(~r.ok).astype(np.float64) for r in group.repeats])
        raise ValueError(f"unknown metric family {family!r}")

    def measure(self, group: StepGroup, metric: str) -> Measure:
        family, stat = split_metric(metric)
        g = self.samples(group, family)
        ck = (id(group), group.key[0], group.key[1], family)
        if ck not in self._cache:
            stats = list(STATS) if family in LATENCY_FAMILIES else ["mean"]
            n_out = None
            if family == "itl":  # chunk gaps within a request are correlated: n_eff = requests
                n_out = sum(r.itl_requests for r in group.repeats)
            self._cache[ck] = bootstrap_stats(g, stats, self.resamples, self._rng(group, family), n_out)
        errors = sum(sum(r.errors.values()) for r in group.repeats)
        boot = self._cache[ck][stat]
        lo, hi = percentile_interval(boot, self.confidence)
        n_samples, needed = g.n, None
        q = stat_quantile(stat) if family in LATENCY_FAMILIES else None
        if family == "error_rate":
            total = group.n_total
            point = errors / total if total else math.nan
            per_repeat = tuple(
                sum(r.errors.values()) / r.n_total if r.n_total else math.nan for r in group.repeats
            )
        else:
            point = point_stat(g.values, stat)
            per_repeat = self._per_repeat(group, family, stat)
        if q is not None and g.n:
            n_eff = sum(r.itl_requests for r in group.repeats) if family == "itl" else None
            qi = quantile_interval(g.values, q, self.confidence, n_eff)
            lo, hi, n_samples = qi.lo, qi.hi, qi.n
            if not math.isfinite(hi) and q < 1.0:
                needed = min_samples(q, self.confidence)
        return Measure(
            metric=metric,
            point=point,
            boot=boot,
            n_requests=group.n_ok,
            n_total=group.n_total,
            repeats=len(group.repeats),
            errors=errors,
            lo=lo,
            hi=hi,
            per_repeat=per_repeat,
            n_samples=n_samples,
            needed=needed,
        )

    @staticmethod
    def _per_repeat(group: StepGroup, family: str, stat: str) -> tuple[float, ...]:
        """The metric on each repeat alone: the spread between these is the between-run noise."""
        if family in LATENCY_FAMILIES:
            return tuple(point_stat(r.latency(family), stat) for r in group.repeats)
        rates = [np.asarray(r.windows.get(family, []), dtype=np.float64) for r in group.repeats]
        return tuple(float(w.mean()) if w.size else math.nan for w in rates)
