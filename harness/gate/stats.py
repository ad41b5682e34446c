"""Noise-aware statistics for comparing two runs from their per-request samples.

Why bootstrap: means and window rates have no usable closed-form sampling
distribution here (LLM latency is far from normal), so the gate resamples
what it measured. Percentile *intervals* in the gate come from order
statistics instead (:mod:`harness.gate.orderstat`): distribution-free, and
honest about a tail resting on a few dozen samples, where a bootstrap only
reshuffles the few largest values it saw. Why *two-stage*: when a scenario has
``repeats: N``, most of the run-to-run noise lives between repeats (server
warm state, page cache, batch phase), so resampling requests alone would
understate it. With two or more repeats we first resample repeats, then
requests within the chosen repeats.

Everything is vectorised numpy and seeded, so the same inputs always give the
same interval. Percentiles use order statistics of resampled *indices* into a
pre-sorted sample (``np.partition`` along rows), which keeps 5 000 samples ×
2 000 resamples well under a second.

Throughput-type metrics (tokens per second) are not per-request quantities.
They are handled by cutting each measured step into equal time windows
(see :mod:`harness.gate.baseline`), computing the rate in each window, and
bootstrapping the mean window rate, again two-stage across repeats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STATS: tuple[str, ...] = ("p50", "p90", "p95", "p99", "mean", "min", "max")
# A resample draws at most this many items; a larger sample is bootstrapped m-out-of-n (below).
MAX_DRAW = 10_000


@dataclass(frozen=True)
class Groups:
    """A sample split into repeats: ``values`` sorted within the whole, plus each value's repeat."""

    values: np.ndarray  # float64, concatenated over repeats
    group: np.ndarray  # int, repeat index of each value (0..R-1)

    @property
    def n(self) -> int:
        return int(self.values.size)

    @property
    def repeats(self) -> int:
        return int(self.group.max()) + 1 if self.group.size else 0


def make_groups(parts: Sequence[np.ndarray]) -> Groups:
    """Concatenate per-repeat samples, dropping NaNs; empty repeats are dropped entirely."""
    kept = [np.asarray(p, dtype=np.float64) for p in parts]
    kept = [p[~np.isnan(p)] for p in kept]
    kept = [p for p in kept if p.size]
    if not kept:
        return Groups(np.empty(0), np.empty(0, dtype=np.int64))
    values = np.concatenate(kept)
    group = np.concatenate([np.full(p.size, i, dtype=np.int64) for i, p in enumerate(kept)])
    return Groups(values, group)


def _resample_indices(g: Groups, n_out: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """A (resamples × n_out) matrix of indices into ``g.values``.

    One repeat: plain i.i.d. resampling. Several: each resample first draws R
    repeats with replacement, then every output item picks one of those R
    slots uniformly and a request uniformly within that repeat. (This lets the
    number of items per repeat vary slightly; with near-equal repeat sizes it
    is the standard two-stage bootstrap.) Indices are uint16 when they fit,
    because radix-sorting 16-bit rows is several times faster than int64.
    """
    dtype = np.uint16 if g.n <= np.iinfo(np.uint16).max else np.int32
    if g.repeats <= 1:
        return rng.integers(0, g.n, size=(resamples, n_out), dtype=dtype)
    sizes = np.bincount(g.group)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.argsort(g.group, kind="stable")  # indices grouped by repeat
    reps = g.repeats
    chosen = rng.integers(0, reps, size=(resamples, reps), dtype=np.int32)
    slot = rng.integers(0, reps, size=(resamples, n_out), dtype=np.int32)
    slot += (np.arange(resamples, dtype=np.int32) * reps)[:, None]
    rep = chosen.ravel()[slot]
    within = rng.random((resamples, n_out), dtype=np.float32)
    within *= sizes.astype(np.float32)[rep]
    pos = offsets.astype(np.int32)[rep] + np.minimum(within.astype(np.int32), sizes.astype(np.int32)[rep] - 1)
    return order.astype(dtype)[pos]


def point_stat(values: np.ndarray, stat: str) -> float:
    """The statistic on the observed sample (linear-interpolated percentiles, like numpy's default)."""
    if values.size == 0:
        return math.nan
    if stat == "mean":
        return float(values.mean())
    if stat == "min":
        return float(values.min())
    if stat == "max":
        return float(values.max())
    if stat.startswith("p"):
        return float(np.percentile(values, float(stat[1:])))
    raise ValueError(f"unknown statistic {stat!r}; expected one of {', '.join(STATS)}")


def bootstrap_stats(
    g: Groups, stats: Sequence[str], resamples: int, rng: np.random.Generator, n_out: int | None = None
) -> dict[str, np.ndarray]:
    """Bootstrap distribution (length ``resamples``) of each requested statistic.

    All statistics share one set of resamples. ``n_out`` lets a caller draw
    fewer items than the pooled sample holds (ITL: chunk gaps within one
    request are correlated, so the effective sample size is the request count).
    Past ``MAX_DRAW`` items a resample draws ``MAX_DRAW`` and is rescaled (m-out-of-n).
    """
    if g.n == 0:
        return {s: np.full(resamples, math.nan) for s in stats}
    n_out = g.n if n_out is None else max(1, min(int(n_out), g.n))
    sort_order = np.argsort(g.values, kind="stable")
    sorted_vals = g.values[sort_order]  # = np.sort(values, kind="stable"), without sorting twice
    sorted_g = Groups(sorted_vals, g.group[sort_order])
    draw = min(n_out, MAX_DRAW)
    idx = _resample_indices(sorted_g, draw, resamples, rng)
    # Row-sorting indices into a sorted array yields each resample's order statistics
    # (equal indices are interchangeable, so the fastest sort gives the same rows).
    idx.sort(axis=1, kind="stable" if idx.dtype == np.uint16 else None)
    out: dict[str, np.ndarray] = {}
    for s in stats:
        if s == "mean":
            out[s] = sorted_vals[idx].mean(axis=1)
        elif s == "min":
            out[s] = sorted_vals[idx[:, 0]]
        elif s == "max":
            out[s] = sorted_vals[idx[:, draw - 1]]
        elif s.startswith("p") and s[1:].replace(".", "", 1).isdigit():
            pos = float(s[1:]) / 100.0 * (draw - 1)
            lo = int(math.floor(pos))
            hi = min(lo + 1, draw - 1)
            frac = pos - lo
            out[s] = sorted_vals[idx[:, lo]] * (1 - frac) + sorted_vals[idx[:, hi]] * frac
        else:
            raise ValueError(f"unknown statistic {s!r}; expected one of {', '.join(STATS)}")
        if draw < n_out:
            # m-out-of-n bootstrap: a statistic of m draws spreads sqrt(n/m) times wider than one of n
            # (mean and percentiles are root-n consistent), so the replicates are scaled back around the
            # full sample's value. Why: resampling a million requests 2,000 times would cost minutes and
            # gigabytes (issue 11 §3); this keeps the cost flat past MAX_DRAW samples.
            point = point_stat(sorted_vals, s)
            out[s] = point + math.sqrt(draw / n_out) * (out[s] - point)
    return out


@dataclass(frozen=True)
class Diff:
    """Relative change run/baseline − 1 with a percentile-bootstrap interval."""

    base: float
    run: float
    rel: float
    lo: float
    hi: float
    n_base: int
    n_run: int


def relative_diff(
    base_boot: np.ndarray, run_boot: np.ndarray, base: float, run: float, confidence: float
) -> tuple[float, float, float]:
    """Point estimate and interval of run/base − 1 from two independent bootstrap distributions."""
    if not (base > 0) or math.isnan(run):
        return math.nan, math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = run_boot / base_boot - 1.0
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size == 0:
        return run / base - 1.0, math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ratio, [alpha, 1.0 - alpha])
    return run / base - 1.0, float(lo), float(hi)


def percentile_interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = boot[np.isfinite(boot)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Score interval for a proportion; sane at 0 and n, unlike the normal approximation."""
    if n <= 0:
        return math.nan, math.nan
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(confidence: float) -> float:
    """Two-sided normal quantile via the inverse error function (no scipy dependency)."""
    p = 1 - (1 - confidence) / 2
    # Newton iterations on the normal CDF; converges in a handful of steps.
    x = 0.0
    for _ in range(50):
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        pdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        step = (cdf - p) / pdf
        x -= step
        if abs(step) < 1e-12:
            break
    return x


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test (normal approximation, tie-corrected).

    Returns ``(p_value, effect)`` where effect is the common-language effect
    size P(b > a) + ½P(b = a): 0.5 means no shift, above 0.5 means ``b`` tends
    to be larger. Shown next to percentile deltas as a distribution-level check.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="mergesort")
    sorted_vals = both[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks_sorted = np.repeat(avg, counts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    r2 = ranks[n1:].sum()
    u2 = r2 - n2 * (n2 + 1) / 2.0
    effect = u2 / (n1 * n2)
    n = n1 + n2
    tie = float((counts**3 - counts).sum())
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0, float(effect)
    z = (u2 - n1 * n2 / 2.0 - math.copysign(0.5, u2 - n1 * n2 / 2.0)) / math.sqrt(var)
    p = math.erfc(abs(z) / math.sqrt(2))
    return float(min(1.0, p)), float(effect)


def extra_samples_needed(n: int, half_width: float, distance: float, cap_factor: float = 100.0) -> int | None:
    """Roughly how many more samples shrink an interval's half-width below ``distance``.

    Interval width scales like 1/√n, so n' ≈ n·(h/d)². ``None`` means the
    estimate sits (almost) exactly on the boundary and no practical amount of
    extra data would settle it.
    """
    if n <= 0 or not math.isfinite(half_width) or half_width <= 0:
        return None
    if distance <= 0 or not math.isfinite(distance):
        return None
    need = n * (half_width / distance) ** 2
    if need > n * cap_factor:
        return None
    return max(1, int(math.ceil(need - n)))
