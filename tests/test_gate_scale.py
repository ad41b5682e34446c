"""The gate's statistics past ``MAX_DRAW`` samples: flat cost, and intervals still as wide as the data says.

Why: a million-request run must be judged in bounded time (issue 11 §3), so a
resample draws ``MAX_DRAW`` items and is rescaled (m-out-of-n bootstrap). The
rescaled spread must match what theory gives for the full sample size.
"""

from __future__ import annotations

import numpy as np

from harness.gate.stats import MAX_DRAW, bootstrap_stats, make_groups


def test_large_samples_bootstrap_with_the_full_samples_spread() -> None:
    rng = np.random.default_rng(0)
    n = 20 * MAX_DRAW
    values = rng.normal(100.0, 10.0, n)
    boot = bootstrap_stats(make_groups([values]), ["mean", "p50"], 2000, np.random.default_rng(1))
    assert boot["mean"].shape == (2000,)
    se = 10.0 / np.sqrt(n)  # standard error of the mean of n samples
    assert abs(boot["mean"].std() / se - 1.0) < 0.1
    assert abs(boot["mean"].mean() - values.mean()) < 0.2 * se  # centred on the full sample's mean
    se_median = 1.2533 * se  # sqrt(pi/2) sigma / sqrt(n) for a normal median
    assert abs(boot["p50"].std() / se_median - 1.0) < 0.15


def test_small_samples_are_bootstrapped_as_before() -> None:
    values = np.random.default_rng(2).exponential(5.0, 500)
    a = bootstrap_stats(make_groups([values]), ["mean"], 300, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    idx = np.sort(rng.integers(0, 500, size=(300, 500), dtype=np.uint16), axis=1)
    np.testing.assert_allclose(a["mean"], np.sort(values)[idx].mean(axis=1))
