"""Bootstrap, rank test and interval helpers: correct values, deterministic, repeats-aware."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.gate.stats import (
    bootstrap_stats,
    extra_samples_needed,
    make_groups,
    mann_whitney,
    percentile_interval,
    point_stat,
    relative_diff,
    wilson_interval,
)


def test_point_stats_match_numpy() -> None:
    x = np.random.default_rng(0).lognormal(3, 0.5, 1001)
    assert point_stat(x, "p95") == pytest.approx(np.percentile(x, 95))
    assert point_stat(x, "mean") == pytest.approx(x.mean())
    assert point_stat(x, "max") == x.max()
    assert math.isnan(point_stat(np.empty(0), "p50"))
    with pytest.raises(ValueError, match="unknown statistic"):
        point_stat(x, "median")


def test_bootstrap_is_seeded_and_centred_on_the_sample() -> None:
    x = np.random.default_rng(1).normal(100, 10, 3000)
    g = make_groups([x])
    a = bootstrap_stats(g, ["p50", "p99", "mean"], 500, np.random.default_rng(7))
    b = bootstrap_stats(g, ["p50", "p99", "mean"], 500, np.random.default_rng(7))
    for k in a:
        assert np.array_equal(a[k], b[k])
        assert a[k].shape == (500,)
    assert a["mean"].mean() == pytest.approx(x.mean(), rel=1e-3)
    assert a["p50"].mean() == pytest.approx(np.percentile(x, 50), rel=5e-3)
    # standard error of the mean ≈ σ/√n
    assert a["mean"].std() == pytest.approx(10 / math.sqrt(3000), rel=0.2)


def test_bootstrap_interval_covers_true_percentile_most_of_the_time() -> None:
    true_p90 = 100 + 10 * 1.2815515655446004
    hits = 0
    for seed in range(40):
        x = np.random.default_rng(seed).normal(100, 10, 800)
        boot = bootstrap_stats(make_groups([x]), ["p90"], 400, np.random.default_rng(seed))["p90"]
        lo, hi = percentile_interval(boot, 0.95)
        hits += lo <= true_p90 <= hi
    assert hits >= 34  # nominal 95 % of 40 = 38; allow for bootstrap under-coverage


def test_two_stage_bootstrap_widens_when_repeats_disagree() -> None:
    rng = np.random.default_rng(3)
    same = [rng.normal(100, 5, 500) for _ in range(3)]
    shifted = [rng.normal(100 + 10 * i, 5, 500) for i in range(3)]
    w_same = bootstrap_stats(make_groups(same), ["mean"], 1000, np.random.default_rng(0))["mean"].std()
    w_shift = bootstrap_stats(make_groups(shifted), ["mean"], 1000, np.random.default_rng(0))["mean"].std()
    assert make_groups(shifted).repeats == 3
    assert w_shift > 5 * w_same


def test_make_groups_drops_nans_and_empty_repeats() -> None:
    g = make_groups([np.array([1.0, np.nan, 2.0]), np.array([]), np.array([np.nan]), np.array([5.0])])
    assert g.n == 3 and g.repeats == 2
    assert list(g.group) == [0, 0, 1]
    empty = bootstrap_stats(make_groups([]), ["p50"], 10, np.random.default_rng(0))["p50"]
    assert np.isnan(empty).all()


def test_relative_diff_and_zero_baseline() -> None:
    base_boot = np.full(100, 10.0)
    run_boot = np.linspace(11.0, 12.0, 100)
    rel, lo, hi = relative_diff(base_boot, run_boot, 10.0, 11.5, 0.95)
    assert rel == pytest.approx(0.15)
    assert 0.09 < lo < hi < 0.21
    assert all(math.isnan(v) for v in relative_diff(base_boot, run_boot, 0.0, 1.0, 0.95))


def test_mann_whitney_detects_shift_and_not_noise() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    p_same, eff_same = mann_whitney(a, b)
    p_shift, eff_shift = mann_whitney(a, b + 0.5)
    assert p_same > 0.01 and 0.4 < eff_same < 0.6
    assert p_shift < 1e-6 and eff_shift > 0.6
    p_ties, _ = mann_whitney(np.ones(10), np.ones(10))
    assert p_ties == 1.0
    assert math.isnan(mann_whitney(np.array([]), a)[0])


def test_wilson_interval_bounds() -> None:
    lo, hi = wilson_interval(0, 200, 0.95)
    assert lo == 0.0 and 0.01 < hi < 0.03
    lo, hi = wilson_interval(10, 200, 0.95)
    assert lo < 0.05 < hi
    assert all(math.isnan(v) for v in wilson_interval(0, 0, 0.95))


def test_extra_samples_needed_scales_with_square_of_width() -> None:
    assert extra_samples_needed(100, half_width=0.2, distance=0.1) == 300
    assert extra_samples_needed(100, half_width=0.05, distance=0.1) == 1
    assert extra_samples_needed(100, half_width=0.2, distance=0.0) is None
    assert extra_samples_needed(100, half_width=1.0, distance=0.01) is None  # beyond any practical amount
