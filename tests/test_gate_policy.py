"""Gate policies: the shipped default loads, percentages parse, typos fail naming file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.gate.policy import PolicyError, load_policy, metric_names, parse_policy


def test_default_policy_ships_and_covers_latency_throughput_errors() -> None:
    pol = load_policy()
    assert {"ttft_p95", "tpot_p50", "output_tok_s", "error_rate"} <= set(pol.rules)
    assert pol.rules["ttft_p50"].max_increase == pytest.approx(0.10)
    assert pol.rules["output_tok_s"].max_decrease == pytest.approx(0.05)
    assert pol.rules["error_rate"].max == pytest.approx(0.005)
    assert set(pol.rules) <= set(metric_names())


def test_percent_and_fraction_forms_are_equal() -> None:
    a = parse_policy({"rules": {"ttft_p95": {"max_increase": "10%"}}})
    b = parse_policy({"rules": {"ttft_p95": {"max_increase": 0.1}}})
    assert a.rules["ttft_p95"].max_increase == pytest.approx(b.rules["ttft_p95"].max_increase)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"rules": {"ttft_p59": {"max_increase": "10%"}}}, "ttft_p59"),
        ({"rules": {"ttft_p95": {"max_increse": "10%"}}}, "max_increse"),
        ({"rules": {"ttft_p95": {"max_increase": "ten%"}}}, "ten%"),
        ({"rules": {"ttft_p95": {}}}, "at least one"),
        ({"confidence": 1.5}, "confidence"),
        ({"version": 9}, "version"),
    ],
)
def test_bad_policies_name_the_field_and_value(data: dict, needle: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(data, "ci/policy.yaml")
    assert "ci/policy.yaml" in str(err.value)
    assert needle in str(err.value)


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    bad.write_text("- a list")
    with pytest.raises(PolicyError, match="mapping"):
        load_policy(bad)
    good = tmp_path / "good.yaml"
    good.write_text("inconclusive_fails: false\nrules:\n  e2e_p99: {max_increase: 20%, max: 5000}\n")
    pol = load_policy(good)
    assert pol.inconclusive_fails is False and pol.rules["e2e_p99"].max == 5000
