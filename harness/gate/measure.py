"""One metric of one step, measured with its bootstrap distribution.

Why separate from the verdict: ``gate`` and ``compare`` both need "value of
metric M for step S, with noise", and they must compute it identically.
Each (step, metric family) is resampled once with a seed derived from the
policy seed and the step's key, so results do not depend on rule order.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from harness.gate.rundata import StepGroup
from harness.gate.samples import LATENCY_FAMILIES, RATE_METRICS
from harness.gate.stats import STATS, Groups, bootstrap_stats, make_groups, point_stat


@dataclass(frozen=True)
class Measure:
    """Point value, bootstrap replicates, and the sample sizes behind them."""

    metric: str
    point: float
    boot: np.ndarray
    n_requests: int  # successful measured requests (all repeats, before downsampling)
    n_total: int  # all measured requests
    repeats: int
    errors: int = 0


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

    def __init__(self, resamples: int, seed: int) -> None:
        self.resamples = resamples
        self.seed = seed
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
        if family == "error_rate":
            total = group.n_total
            point = errors / total if total else math.nan
        else:
            point = point_stat(g.values, stat)
        return Measure(
            metric=metric,
            point=point,
            boot=self._cache[ck][stat],
            n_requests=group.n_ok,
            n_total=group.n_total,
            repeats=len(group.repeats),
            errors=errors,
        )
