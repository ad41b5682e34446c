"""The capacity search's logic (harness/search.py) on synthetic probes, and its scenario validation.

The probes here are made-up ``StepMetrics`` whose attainment is a known step function of
the rate, so the search's bracketing, bisection and stop reasons can be checked exactly;
the simulator test (test_search_sim.py) checks the same search against a measured server.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.results import HarnessHealth, StepMetrics
from harness.scenario import ScenarioError, parse_scenario
from harness.search import CapacitySearch, SearchSpec, probe_id, resumed_search, search_problems
from harness.slo import Slo


def probe(
    rate: float, attainment: float | None, *, error_rate: float = 0.0, limited: bool = False
) -> StepMetrics:
    return StepMetrics(
        step_id=probe_id(rate),
        kind="rate",
        target=rate,
        duration_s=1.0,
        requests_total=100,
        requests_ok=100,
        requests_warmup=0,
        slo_attainment=attainment,
        output_tok_s=rate * 10,
        error_rate=error_rate,
        harness=HarnessHealth(limited=limited, reasons=["loop lag"] if limited else []),
    )


def drive(spec: SearchSpec, capacity: float, **kw: Any) -> CapacitySearch:
    """Run a search against a server whose attainment is 1.0 up to ``capacity`` and 0.5 above."""
    search = CapacitySearch(spec)
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.observe(probe(rate, 1.0 if rate <= capacity else 0.5, **kw))
        assert len(rates) <= spec.max_steps
    assert len(rates) == len(set(rates)), f"a rate was probed twice: {rates}"
    return search


@pytest.mark.parametrize("capacity", [1.3, 7.0, 12.0, 33.3, 77.0])
@pytest.mark.parametrize("precision", [0.02, 0.1])
def test_converges_within_precision_of_a_known_capacity(capacity: float, precision: float) -> None:
    spec = SearchSpec(min_rate=1, max_rate=100, precision=precision, max_steps=30)
    search = drive(spec, capacity)
    cap = search.capacity({"ttft": 100.0})
    assert cap.stop == "converged", cap.stop_reason
    assert cap.req_s is not None and cap.upper_req_s is not None
    assert cap.req_s <= capacity < cap.upper_req_s  # the bracket holds the truth
    assert (cap.upper_req_s - cap.req_s) / cap.req_s <= precision
    assert cap.tok_s == pytest.approx(cap.req_s * 10)  # the passing probe's own tokens/s
    assert cap.probes == [m.step_id for m in search.probes]


def test_bracketing_doubles_from_min_rate_then_bisects_geometrically() -> None:
    search = drive(SearchSpec(min_rate=2, max_rate=100, precision=0.05), capacity=10)
    rates = [m.target for m in search.probes]
    assert rates[:4] == [2, 4, 8, 16]  # 16 fails: bracket 8..16
    assert rates[4] == pytest.approx((8 * 16) ** 0.5, rel=1e-3)


def test_capacity_below_min_rate_says_so() -> None:
    cap = drive(SearchSpec(min_rate=5, max_rate=50), capacity=3).capacity({})
    assert cap.stop == "below_min_rate" and cap.req_s is None and cap.upper_req_s == 5
    assert "capacity < min_rate (5 req/s failed)" in cap.stop_reason


def test_capacity_at_or_above_max_rate_says_so() -> None:
    search = drive(SearchSpec(min_rate=5, max_rate=30), capacity=1000)
    cap = search.capacity({})
    assert [m.target for m in search.probes] == [5, 10, 20, 30]  # the last probe is max_rate itself
    assert cap.stop == "above_max_rate" and cap.req_s == 30 and cap.upper_req_s is None
    assert "capacity >= max_rate" in cap.stop_reason


def test_max_steps_stops_before_precision() -> None:
    search = drive(SearchSpec(min_rate=1, max_rate=1000, precision=0.01, max_steps=5), capacity=100)
    cap = search.capacity({})
    assert len(search.probes) == 5 and cap.stop == "max_steps"
    assert cap.req_s == 16 and cap.upper_req_s is None  # still bracketing: 1, 2, 4, 8, 16 all passed


def test_harness_limited_probe_stops_the_search() -> None:
    search = CapacitySearch(SearchSpec(min_rate=1, max_rate=100))
    search.observe(probe(1, 1.0))
    search.observe(probe(2, 1.0, limited=True))
    cap = search.capacity({})
    assert search.next_rate() is None and cap.stop == "harness_limited"
    assert "search-r2 was harness-limited (loop lag)" in cap.stop_reason
    assert cap.req_s == 1  # the limited probe's own verdict is not taken


def test_erroring_probe_stops_the_search() -> None:
    search = CapacitySearch(SearchSpec(min_rate=1, max_rate=100, max_error_rate=0.02))
    search.observe(probe(1, 0.97, error_rate=0.03))
    cap = search.capacity({})
    assert search.next_rate() is None and cap.stop == "errors" and cap.req_s is None
    assert "failed 3.0% of requests" in cap.stop_reason


def test_a_probe_without_attainment_fails() -> None:
    search = CapacitySearch(SearchSpec(min_rate=1, max_rate=100))
    assert not search.verdict(probe(1, None))


def test_resume_replays_earlier_probes_and_continues() -> None:
    spec = SearchSpec(min_rate=1, max_rate=100, precision=0.05)
    full = drive(spec, capacity=20)
    earlier = full.probes[:4]
    search, unused = resumed_search(spec, earlier)
    assert unused == [] and search.probes == earlier
    assert search.next_rate() == full.probes[4].target  # the same next probe as the uninterrupted search


def test_probe_ids_are_stable_and_distinct_from_fixed_steps() -> None:
    assert probe_id(3.25) == "search-r3.25"
    assert probe_id(1 / 3) == "search-r0.3333"


BASE: dict[str, Any] = {
    "name": "s",
    "servers": [{"name": "a", "backend": "sim", "model": "m"}],
    "workload": {"prompt_tokens": 8, "output_tokens": 4, "duration_s": 2},
}


def scenario_with(search: dict[str, Any], **extra: Any) -> Any:
    data = {**BASE, **extra, "workload": {**BASE["workload"], "steps": {"search": search}}}
    return parse_scenario(data, "s.yaml")


def test_a_search_alone_is_a_valid_steps_block() -> None:
    sc = scenario_with({"min_rate": 1, "max_rate": 8}, slo={"ttft_p99_ms": 100})
    spec = sc.workload.steps.search
    assert spec is not None and spec.target == 0.99 and spec.precision == 0.05
    assert search_problems(spec, sc.slo, sc.workload.duration_s) == []


@pytest.mark.parametrize(
    ("search", "field"),
    [
        ({"min_rate": 8, "max_rate": 4}, "max_rate"),
        ({"min_rate": 1, "max_rate": 8, "precision": 0}, "precision"),
        ({"min_rate": 1, "max_rate": 8, "target": 1.5}, "target"),
        ({"min_rate": 1, "max_rate": 8, "max_step": 3}, "max_step"),
        ({"max_rate": 8}, "min_rate"),
    ],
)
def test_bad_search_fields_are_named(search: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as err:
        scenario_with(search)
    assert "s.yaml" in str(err.value) and f"search.{field}" in str(err.value)


def test_a_search_needs_an_slo_and_a_reachable_min_rate() -> None:
    sc = scenario_with({"min_rate": 0.1, "max_rate": 8})
    spec = sc.workload.steps.search
    assert spec is not None
    problems = search_problems(spec, Slo(), 2.0)
    assert any("search.slo" in p for p in problems)
    assert any("search.min_rate" in p and "0.1" in p for p in problems)
    own = SearchSpec(min_rate=1, max_rate=8, slo=Slo(e2e_p99_ms=500))
    assert search_problems(own, Slo(), 2.0) == []


def test_arrivals_never_sent_count_as_misses() -> None:
    m = probe(40, 1.0)
    m.harness.unsent = 100  # 100 measured requests all good, 100 more never left the client's pool
    search = CapacitySearch(SearchSpec(min_rate=1, max_rate=100, target=0.9))
    assert not search.verdict(m)
    from harness.search import offered_attainment

    assert offered_attainment(m) == 0.5


def test_a_max_rate_with_more_digits_than_probe_ids_ends_the_bracket() -> None:
    search = drive(SearchSpec(min_rate=3000, max_rate=12345, max_steps=10), capacity=1e9)
    assert [m.target for m in search.probes] == [3000, 6000, 12000, 12340]
    assert search.capacity({}).stop == "above_max_rate"
