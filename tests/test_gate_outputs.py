"""Gate outputs: JUnit XML structure and counts, Markdown that renders as tables, JSON that round-trips."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from gate_synth import write_run
from harness.gate.match import match_runs
from harness.gate.outputs import to_json, to_json_text, to_junit, to_markdown
from harness.gate.policy import load_policy
from harness.gate.rundata import load_run_folder
from harness.gate.verdict import GateResult, evaluate

# The Jenkins xunit-plugin's JUnit schema (tests/data/junit/README.md names its source).
JUNIT_XSD = Path(__file__).parent / "data" / "junit" / "junit-10.xsd"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GateResult]:
    tmp = tmp_path_factory.mktemp("out")
    base = load_run_folder(write_run(tmp / "base", seed=1))
    runs = {
        "same": write_run(tmp / "same", seed=2),
        "slow": write_run(tmp / "slow", seed=3, itl_ms=11.5),
        "tiny": write_run(tmp / "tiny", seed=4, duration_s=0.4),
    }
    pol = load_policy()
    return {k: evaluate(match_runs(base, load_run_folder(p)), pol, "base", k) for k, p in runs.items()}


def _check_junit(text: str, n_checks: int) -> ET.Element:
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "testsuites"
    assert root.get("skipped") is None  # not in the Jenkins schema's <testsuites>
    totals = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
    times = 0.0
    for suite in root:
        assert suite.tag == "testsuite" and suite.get("name")
        cases = list(suite)
        assert all(c.tag == "testcase" and c.get("name") and c.get("classname") for c in cases)
        failures = sum(1 for c in cases if c.find("failure") is not None)
        skipped = sum(1 for c in cases if c.find("skipped") is not None)
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == failures
        assert int(suite.get("skipped")) == skipped
        assert int(suite.get("errors")) == 0
        for k in totals:
            totals[k] += int(suite.get(k))
        case_times = [float(c.get("time")) for c in cases]
        assert all(t >= 0 for t in case_times)
        assert float(suite.get("time")) == pytest.approx(sum(case_times), abs=0.001 * (len(cases) + 1))
        times += float(suite.get("time"))
    for k, v in totals.items():
        if k != "skipped":
            assert int(root.get(k)) == v
    assert float(root.get("time")) == pytest.approx(times, abs=0.001 * (len(root) + 1))
    assert totals["tests"] == n_checks
    return root


def test_junit_structure_and_counts(results: dict[str, GateResult]) -> None:
    for res in results.values():
        root = _check_junit(to_junit(res), len(res.checks))
        regressions = sum(1 for c in res.checks if c.verdict == "regression")
        typed = [f.get("type") for f in root.iter("failure")]
        assert typed.count("regression") == regressions
    slow = _check_junit(to_junit(results["slow"]), len(results["slow"].checks))
    assert int(slow.get("failures")) >= 4


def test_junit_inconclusive_is_failure_or_skipped_by_policy(results: dict[str, GateResult]) -> None:
    tiny = results["tiny"]
    strict = ET.fromstring(to_junit(tiny).split("\n", 1)[1])
    assert int(strict.get("failures")) == len(tiny.checks)
    tiny.policy = tiny.policy.model_copy(update={"inconclusive_fails": False})
    lenient = ET.fromstring(to_junit(tiny).split("\n", 1)[1])
    skipped = sum(int(s.get("skipped")) for s in lenient)
    assert skipped == len(tiny.checks) and int(lenient.get("failures")) == 0
    tiny.policy = tiny.policy.model_copy(update={"inconclusive_fails": True})


def test_junit_validates_against_the_jenkins_schema(results: dict[str, GateResult]) -> None:
    """Every verdict mix (pass, regression, inconclusive as failure and as skipped) is schema-valid."""
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    tiny = results["tiny"]
    lenient = GateResult(
        tiny.baseline, tiny.run, tiny.policy.model_copy(update={"inconclusive_fails": False})
    )
    lenient.checks = tiny.checks
    for res in [*results.values(), lenient]:
        text = to_junit(res)
        schema.validate(text)  # raises XMLSchemaValidationError naming the element and attribute
        assert any(float(c.get("time")) > 0 for c in ET.fromstring(text.split("\n", 1)[1]).iter("testcase"))
    broken = to_junit(results["same"]).replace("<testsuites ", '<testsuites skipped="0" ', 1)
    assert not schema.is_valid(broken)  # the schema does catch what the old writer did


def _tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def _cells(row: str) -> int:
    return len(row.replace("\\|", "").strip().strip("|").split("|"))


def test_markdown_tables_are_consistent_and_render(results: dict[str, GateResult]) -> None:
    from markdown_it import MarkdownIt

    md = to_markdown(results["slow"])
    assert "**regression**" in md.splitlines()[0]
    tables = _tables(md)
    assert tables
    for table in tables:
        widths = {_cells(r) for r in table}
        assert widths == {9}, table
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert html.count("<table>") == len(tables)
    assert html.count("<tr>") == sum(len(t) - 1 for t in tables)  # header + rows, minus the --- line
    assert "tpot_p50" in html


def test_markdown_escapes_pipes_in_messages(results: dict[str, GateResult]) -> None:
    res = results["same"]
    res.checks[0].message = "a | b"
    md = to_markdown(res)
    assert "a \\| b" in md
    assert all(_cells(r) == 9 for t in _tables(md) for r in t)


def test_json_has_every_check_and_is_valid(results: dict[str, GateResult]) -> None:
    res = results["slow"]
    data = json.loads(to_json_text(res))
    assert data == json.loads(json.dumps(to_json(res)))
    assert data["verdict"] == "regression" and data["exit_code"] == 1
    assert len(data["checks"]) == len(res.checks)
    assert sum(data["counts"].values()) == len(res.checks)
    assert {"metric", "verdict", "interval", "identity", "step_id"} <= set(data["checks"][0])


def test_outputs_are_deterministic(tmp_path: Path) -> None:
    a = load_run_folder(write_run(tmp_path / "a", seed=1))
    b = load_run_folder(write_run(tmp_path / "b", seed=2))
    one = to_json_text(evaluate(match_runs(a, b), load_policy(), "a", "b"))
    two = to_json_text(evaluate(match_runs(a, b), load_policy(), "a", "b"))
    assert one == two
