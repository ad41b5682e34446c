"""The gate's ``capacity_req_s`` rule: judged on the capacity search's brackets.

Runs are the synthetic runs of ``gate_synth`` (a test double of a measured run), with a
capacity search result set on their cell; the rule's verdicts follow the brackets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gate_synth import write_run
from harness.gate.match import match_runs
from harness.gate.policy import PolicyError, load_policy, parse_policy
from harness.gate.rundata import GateRun, load_run_folder
from harness.gate.verdict import Check, evaluate
from harness.results import Capacity

POLICY = {**load_policy().model_dump(mode="json"), "rules": {"capacity_req_s": {"max_decrease": "10%"}}}


def with_capacity(run: GateRun, lo: float | None, hi: float | None, stop: str = "converged") -> GateRun:
    for cell in run.summary.cells:
        cell.capacity = Capacity(
            req_s=lo, tok_s=None if lo is None else lo * 10, upper_req_s=hi, slo={"ttft": 500.0},
            target=0.99, precision=0.05, probes=["search-r1"], stop=stop, stop_reason=f"{stop}: test",
        )  # fmt: skip
    return run


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cap")
    return write_run(root / "base", seed=1), write_run(root / "run", seed=2)


def capacity_check(folders: tuple[Path, Path], base: tuple, run: tuple, policy: dict = POLICY) -> Check:
    b = with_capacity(load_run_folder(folders[0]), *base)
    r = with_capacity(load_run_folder(folders[1]), *run)
    result = evaluate(match_runs(b, r), parse_policy(policy), b.label, r.label, r.scenario)
    checks = [c for c in result.checks if c.metric == "capacity_req_s"]
    assert len(checks) == len(r.summary.cells)
    return checks[0]


def test_same_capacity_passes(folders: tuple[Path, Path]) -> None:
    c = capacity_check(folders, (20.0, 20.8), (20.0, 20.8))
    assert c.verdict == "pass" and c.change == 0 and c.method == "search bracket"


def test_a_drop_beyond_tolerance_with_disjoint_brackets_is_a_regression(folders: tuple[Path, Path]) -> None:
    c = capacity_check(folders, (20.0, 20.8), (14.0, 14.6))
    assert c.verdict == "regression" and c.change == pytest.approx(-0.3)
    assert c.hi is not None and c.hi < 0  # even the run's upper end is below the baseline's lower end


def test_a_drop_inside_the_brackets_is_inconclusive(folders: tuple[Path, Path]) -> None:
    # The brackets overlap: the capacities may be equal, or 20 % apart.
    c = capacity_check(folders, (20.0, 24.0), (18.0, 22.0))
    assert c.verdict == "inconclusive"


def test_an_increase_is_an_improvement(folders: tuple[Path, Path]) -> None:
    assert capacity_check(folders, (10.0, 10.4), (20.0, 20.8)).verdict == "improvement"


def test_a_search_stopped_by_a_harness_limited_probe_is_inconclusive(folders: tuple[Path, Path]) -> None:
    c = capacity_check(folders, (20.0, 20.8), (14.0, 14.6, "harness_limited"))
    assert c.verdict == "inconclusive" and "run search stopped early" in c.message


def test_min_rule_and_a_run_with_no_passing_rate(folders: tuple[Path, Path]) -> None:
    policy = {**POLICY, "rules": {"capacity_req_s": {"min": 15}}}
    assert capacity_check(folders, (20.0, 21.0), (16.0, 17.0), policy).verdict == "pass"
    assert (
        capacity_check(folders, (20.0, 21.0), (None, 4.0, "below_min_rate"), policy).verdict == "regression"
    )
    assert capacity_check(folders, (20.0, 21.0), (10.0, 20.0), policy).verdict == "inconclusive"


def test_capacity_rule_kinds_are_checked() -> None:
    with pytest.raises(PolicyError, match="capacity_req_s takes max_decrease"):
        parse_policy({**POLICY, "rules": {"capacity_req_s": {"max_increase": "5%"}}})


def test_runs_without_a_search_add_no_capacity_check(folders: tuple[Path, Path]) -> None:
    b, r = load_run_folder(folders[0]), load_run_folder(folders[1])
    result = evaluate(match_runs(b, r), parse_policy(POLICY), b.label, r.label, r.scenario)
    assert not [c for c in result.checks if c.metric == "capacity_req_s"]


def test_capacities_pair_by_cell_name_under_match_name(folders: tuple[Path, Path]) -> None:
    from harness.gate.match import rekey

    b = rekey(with_capacity(load_run_folder(folders[0]), 20.0, 20.8), "name")
    r = rekey(with_capacity(load_run_folder(folders[1]), 14.0, 14.6), "name")
    result = evaluate(match_runs(b, r), parse_policy(POLICY), b.label, r.label, r.scenario)
    checks = [c for c in result.checks if c.metric == "capacity_req_s"]
    assert [c.key[0] for c in checks] == [c.cell_id for c in r.summary.cells]
    assert all(c.verdict == "regression" for c in checks)


def test_a_probe_only_one_side_ran_is_not_a_coverage_gap(tmp_path: Path) -> None:
    b = load_run_folder(write_run(tmp_path / "b", seed=1, step_id="search-r10"))
    r = load_run_folder(write_run(tmp_path / "r", seed=2, step_id="search-r14.14"))
    plain_b = load_run_folder(write_run(tmp_path / "pb", seed=1, step_id="r10"))
    plain_r = load_run_folder(write_run(tmp_path / "pr", seed=2, step_id="r14.14"))
    assert match_runs(b, r).mismatches == []
    assert len(match_runs(plain_b, plain_r).mismatches) == 2  # fixed steps still must match
