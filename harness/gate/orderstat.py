"""Distribution-free intervals for percentiles, and the Student t quantile for between-run intervals.

Why order statistics, not a bootstrap, for tail percentiles: with 32-96
requests a bootstrap of p95/p99 only reshuffles the few largest values it
saw, so its interval is both too narrow and silent about how little data a
tail rests on. The order-statistic interval [x_(l), x_(u)] needs no
distributional assumption: the number of samples at or below the true
q-quantile is Binomial(n, q), so choosing ranks l and u from that binomial
covers the true quantile with at least the stated confidence. When n is so
small that no rank u ≤ n reaches the upper tail (a p99 from 32 requests is
just the maximum), the interval is unbounded above, and callers say so.

No scipy: the binomial CDF is summed in log space with numpy, and the t
quantile for integer degrees of freedom uses the closed forms of
Abramowitz & Stegun 26.7.3-4 inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantileInterval:
    """Interval of a percentile; ``lo``/``hi`` are ±inf where the sample cannot bound it."""

    q: float
    n: int
    lo: float
    hi: float

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def _binom_cdf(n: int, q: float) -> np.ndarray:
    """P(B ≤ k) for k = 0..n, B ~ Binomial(n, q), computed in log space (stable for large n)."""
    k = np.arange(n + 1, dtype=np.float64)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    log_pmf = log_fact[n] - log_fact[: n + 1] - log_fact[n::-1]
    with np.errstate(divide="ignore"):
        log_pmf = log_pmf + k * math.log(q) + (n - k) * math.log1p(-q)
    return np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)


def ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    """1-based ranks (l, u) with P(x_(l) ≤ ξ_q ≤ x_(u)) ≥ confidence, equal tails.

    ``l == 0`` means unbounded below and ``u == n + 1`` unbounded above.
    """
    if n <= 0:
        return 0, 1
    if q >= 1.0:
        return n, n + 1
    if q <= 0.0:
        return 0, 1
    alpha = (1.0 - confidence) / 2.0
    cdf = _binom_cdf(n, q)
    below = np.nonzero(cdf <= alpha)[0]  # j with P(B ≤ j) ≤ α/2 → l = j + 1
    lo = int(below[-1]) + 1 if below.size else 0
    above = np.nonzero(cdf >= 1.0 - alpha)[0]  # smallest j with P(B ≤ j) ≥ 1 − α/2 → u = j + 1
    hi = int(above[0]) + 1 if above.size else n + 1
    return lo, min(hi, n + 1)


def min_samples(q: float, confidence: float = 0.95) -> int:
    """Smallest n whose order-statistic interval of the q-quantile is bounded above (p99 → 368, p95 → 72)."""
    if q >= 1.0:
        return math.inf  # type: ignore[return-value]
    alpha = (1.0 - confidence) / 2.0
    return int(math.ceil(math.log(alpha) / math.log(q) - 1e-9))


def stat_quantile(stat: str) -> float | None:
    """``p95`` → 0.95, ``max`` → 1.0, ``min`` → 0.0; ``mean`` and others → None."""
    if stat == "max":
        return 1.0
    if stat == "min":
        return 0.0
    if stat.startswith("p"):
        try:
            return float(stat[1:]) / 100.0
        except ValueError:
            return None
    return None


def quantile_interval(
    values: np.ndarray, q: float, confidence: float, n_eff: int | None = None
) -> QuantileInterval:
    """Order-statistic interval of the q-quantile of ``values``.

    ``n_eff`` (≤ len(values)) is the number of independent observations when
    values are correlated (ITL: gaps within one request move together, so
    the request count is what bounds the tail); the ranks are then computed
    for ``n_eff`` and read off the empirical quantile function of all values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return QuantileInterval(q, 0, math.nan, math.nan)
    m = n if n_eff is None else max(1, min(int(n_eff), n))
    lo_rank, hi_rank = ranks(m, q, confidence)
    if m == n:
        lo = float(x[lo_rank - 1]) if lo_rank >= 1 else -math.inf
        hi = float(x[hi_rank - 1]) if hi_rank <= n else math.inf
    else:
        scale = 1.0 / max(m - 1, 1)
        lo = float(np.quantile(x, (lo_rank - 1) * scale)) if lo_rank >= 1 else -math.inf
        hi = float(np.quantile(x, min(1.0, (hi_rank - 1) * scale))) if hi_rank <= m else math.inf
    return QuantileInterval(q, m, lo, hi)


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student t with integer ``df`` (A&S 26.7.3 / 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df == 1:
        return 2.0 * theta / math.pi
    if df % 2 == 1:
        term, total = c, c
        for k in range(3, df - 1, 2):  # c + (2/3)c³ + (2·4/3·5)c⁵ + … up to c^(df−2)
            term *= c * c * (k - 1) / k
            total += term
        return 2.0 / math.pi * (theta + s * total)
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):  # 1 + (1/2)c² + (1·3/2·4)c⁴ + … up to c^(df−2)
        term *= c * c * (k - 1) / k
        total += term
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided critical value: P(|T| ≤ t) = confidence (df=2, 95 % → 4.303)."""
    if df <= 0:
        return math.inf
    if df > 1000:
        df = 1000  # indistinguishable from the normal; keeps the series short
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if _t_two_sided_mass(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2.0
