"""The policy's assumed run-to-run noise: single-repeat alarms must clear it, passes do not depend on it.

Why: an A/A rerun of real vLLM on a busy machine moved a single-run p50 past
its within-run interval and the gate called it a regression. With one repeat
per side the spread between runs cannot be measured, so the policy states it
(``run_to_run_noise``); these tests pin what that assumption may and may not do.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gate_synth import write_run
from harness.gate.aa import spread
from harness.gate.interval import change_interval
from harness.gate.measure import Measure
from harness.gate.policy import PolicyError, parse_policy
from harness.gate.verdict import decide


def _p50(point: float, rel_halfwidth: float, repeats: int = 1, per_repeat: tuple[float, ...] = ()) -> Measure:
    """A p50 with a tight order-statistic interval, as a long single run gives."""
    return Measure(
        metric="ttft_p50",
        point=point,
        boot=np.empty(0),
        n_requests=1000,
        n_total=1000,
        repeats=repeats,
        lo=point * (1 - rel_halfwidth),
        hi=point * (1 + rel_halfwidth),
        per_repeat=per_repeat or (point,) * repeats,
        n_samples=1000,
    )


def _verdict(change_pct: float, noise: float, tol: float = 0.10) -> str:
    base, run = _p50(100.0, 0.01), _p50(100.0 * (1 + change_pct / 100), 0.01)
    ch = change_interval(base, run, 0.95, noise)
    return decide(ch.rel, ch.lo, ch.hi, tol, (ch.alarm_lo, ch.alarm_hi))


def test_a_seven_percent_single_run_shift_is_an_alarm_only_without_the_assumption() -> None:
    # a 5 % tolerance (the throughput rules'): 7 % is beyond it, and beyond a tight within-run interval
    assert _verdict(7.0, 0.0, tol=0.05) == "regression"  # the A/A false alarm the assumption is for
    assert _verdict(7.0, 0.03, tol=0.05) == "inconclusive"  # z·3 %·√2 ≈ 8.3 % is not cleared
    assert _verdict(12.0, 0.06) == "inconclusive"  # a noisier machine's policy


def test_a_large_change_is_still_a_regression_and_a_large_gain_an_improvement() -> None:
    assert _verdict(25.0, 0.03) == "regression"
    assert _verdict(-25.0, 0.03) == "improvement"


def test_pass_is_read_from_the_measured_interval_alone() -> None:
    assert _verdict(0.5, 0.03) == "pass"
    assert _verdict(0.5, 0.0) == "pass"


def test_measured_between_run_noise_replaces_the_assumption() -> None:
    base = _p50(100.0, 0.01, repeats=3, per_repeat=(99.0, 100.0, 101.0))
    run = _p50(112.0, 0.01, repeats=3, per_repeat=(111.0, 112.0, 113.0))
    ch = change_interval(base, run, 0.95, 0.03)
    assert ch.between_runs and ch.assumed_noise == 0.0
    assert (ch.alarm_lo, ch.alarm_hi) == (ch.lo, ch.hi)
    assert decide(ch.rel, ch.lo, ch.hi, 0.10, (ch.alarm_lo, ch.alarm_hi)) == "regression"


def test_the_alarm_interval_contains_the_measured_one() -> None:
    ch = change_interval(_p50(100.0, 0.02), _p50(107.0, 0.02), 0.95, 0.03)
    assert ch.alarm_lo < ch.lo < ch.rel < ch.hi < ch.alarm_hi
    assert "assumed run-to-run noise (3.0%)" in ch.describe()
    # z · 3 % · √2 on the log scale, combined with the measured deviation
    half = 1.959964 * 0.03 * math.sqrt(2)
    assert math.log1p(ch.alarm_hi) - math.log(1.07) == pytest.approx(
        math.hypot(math.log1p(ch.hi) - math.log(1.07), half), rel=1e-3
    )


def test_policy_reads_percentages_and_refuses_bad_values() -> None:
    assert parse_policy({"run_to_run_noise": "4%"}).run_to_run_noise == pytest.approx(0.04)
    assert parse_policy({}).run_to_run_noise == pytest.approx(0.05)
    with pytest.raises(PolicyError, match=r"run_to_run_noise.*-0\.1"):
        parse_policy({"run_to_run_noise": -0.1}, "p.yaml")


def test_aa_spread_reports_how_much_reruns_moved(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / f"r{i}", seed=70 + i) for i in range(3)]
    slow = write_run(tmp_path / "slow", seed=80, itl_ms=13.0)
    same = spread(runs, ["tpot_p50"])["tpot_p50"]
    mixed = spread([*runs, slow], ["tpot_p50"])["tpot_p50"]
    assert same["steps"] >= 1 and mixed["median"] > same["median"]
