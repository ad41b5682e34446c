"""The gate's verdict in the three forms CI systems consume.

* Markdown: pasted as a pull-request comment, so it leads with the verdict
  and the rules that did not pass, and keeps passing rules in a table below.
* JUnit XML: every CI system renders it; one ``testsuite`` per matched
  (cell, step), one ``testcase`` per rule; regressions are ``<failure>``,
  inconclusive rules are ``<failure type="inconclusive">`` when inconclusive
  fails the build and ``<skipped>`` otherwise. It validates against the
  Jenkins JUnit schema (``tests/data/junit/junit-10.xsd``): ``skipped`` only on
  ``<testsuite>`` (the schema has none on ``<testsuites>``), and ``time`` in
  seconds with at most three decimals: the gate's own time on each rule.
* JSON: the full result for scripts.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from typing import Any

from harness.gate.verdict import Check, GateResult

ICONS = {"pass": "✅", "improvement": "🟢", "regression": "❌", "inconclusive": "⚠️"}


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.4g}"


def _pct(x: float | None) -> str:
    if x is not None and math.isinf(x):
        return "+∞ (unbounded)" if x > 0 else "−∞"
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x * 100:+.1f}%"


def _interval(c: Check) -> str:
    if c.lo is None or c.hi is None:
        return "–"
    if c.base is None:  # absolute rule: interval of the run's own value
        return f"[{_num(c.lo)}, {_num(c.hi)}]"
    return f"[{_pct(c.lo)}, {_pct(c.hi)}]"


def _cell(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(checks: list[Check]) -> list[str]:
    lines = [
        "| | Cell / step | Metric | Rule | Baseline | Run | Change | Interval | Note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        row = [
            ICONS[c.verdict],
            _cell(c.target),
            f"`{c.metric}`",
            _cell(c.rule),
            _num(c.base),
            _num(c.run),
            _pct(c.change),
            _interval(c),
            _cell(" ".join([c.message] + [f"⚠ {n}" for n in c.notes])),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def to_markdown(result: GateResult) -> str:
    counts = result.counts()
    verdict = result.verdict
    head = f"## {ICONS[verdict]} tokenbench gate: **{verdict}**"
    lines = [
        head,
        "",
        f"Baseline `{result.baseline}` vs run `{result.run}` — "
        + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        + f" (confidence {result.policy.confidence:.0%}, {result.policy.resamples} resamples).",
        "",
    ]
    methods = sorted({c.method for c in result.checks if c.method})
    if methods:
        lines += ["Intervals: " + "; ".join(methods) + ".", ""]
    if verdict == "inconclusive":
        fails = "fails" if result.policy.inconclusive_fails else "does not fail"
        lines += [f"Inconclusive {fails} the build under this policy.", ""]
    if result.notes:
        lines += ["**Inputs:**", ""] + [f"- {_cell(n)}" for n in result.notes] + [""]
    if result.harness_limited:
        lines += ["**Harness-limited steps (every verdict on them is inconclusive):**", ""]
        lines += [f"- {_cell(t)}: {_cell('; '.join(r))}" for t, r in result.harness_limited.items()] + [""]
    thin = sorted({f"{c.target}: {n}" for c in result.checks for n in c.notes if n.startswith("too few")})
    if thin:
        lines += ["**Percentiles resting on too few samples:**", ""] + [f"- {_cell(n)}" for n in thin] + [""]
    if result.env_diff:
        lines += ["**Environment differs from the baseline (allowed by --allow-env-mismatch):**", ""]
        lines += [f"- {_cell(d)}" for d in result.env_diff] + [""]
    attention = [c for c in result.checks if c.verdict in ("regression", "inconclusive")]
    rest = [c for c in result.checks if c.verdict not in ("regression", "inconclusive")]
    if attention:
        lines += ["### Needs attention", ""] + _table(attention) + [""]
    if rest:
        lines += ["<details><summary>Passing rules</summary>", ""] + _table(rest) + ["", "</details>", ""]
    if result.mismatches:
        lines += ["### Not matched", ""]
        lines += [f"- ({m.side}) {_cell(m.describe())}" for m in result.mismatches] + [""]
    return "\n".join(lines)


def _seconds(x: float) -> str:
    """JUnit ``time``: the Jenkins schema's SUREFIRE_TIME, digits with at most three decimals."""
    return f"{max(0.0, x):.3f}"


def short_verdict(result: GateResult, limit: int = 5) -> list[str]:
    """A few lines for the CI log: the verdict, the counts and the first checks needing attention."""
    counts = ", ".join(f"{n} {v}" for v, n in result.counts().items() if n) or "no checks"
    lines = [f"{ICONS[result.verdict]} tokenbench gate: {result.verdict} — {counts}"]
    attention = [c for c in result.checks if c.verdict in ("regression", "inconclusive")]
    for c in attention[:limit]:
        lines.append(f"  {c.verdict}: {c.target} {c.metric} ({c.rule}) change {_pct(c.change)}: {c.message}")
    if len(attention) > limit:
        lines.append(f"  … and {len(attention) - limit} more: see gate.md")
    return lines


def to_junit(result: GateResult) -> str:
    """JUnit XML with consistent ``tests``/``failures``/``errors``/``skipped`` counts at every level."""
    root = ET.Element("testsuites", name="tokenbench-gate")
    suites: dict[str, list[Check]] = {}
    for c in result.checks:
        suites.setdefault(c.target, []).append(c)
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    for target, checks in suites.items():
        suite = ET.SubElement(root, "testsuite", name=target)
        counts = {"tests": len(checks), "failures": 0, "errors": 0, "skipped": 0}
        suite_time = sum(c.seconds for c in checks)
        for c in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                name=f"{c.metric} {c.rule}",
                classname=f"tokenbench.gate.{target}",
                time=_seconds(c.seconds),
            )
            detail = (
                f"baseline={_num(c.base)} run={_num(c.run)} change={_pct(c.change)} "
                f"interval={_interval(c)}: {c.message}" + "".join(f" [{n}]" for n in c.notes)
            )
            if c.verdict == "regression":
                counts["failures"] += 1
                ET.SubElement(case, "failure", message=c.message, type="regression").text = detail
            elif c.verdict == "inconclusive" and result.policy.inconclusive_fails:
                counts["failures"] += 1
                ET.SubElement(case, "failure", message=c.message, type="inconclusive").text = detail
            elif c.verdict == "inconclusive":
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=c.message)
            else:
                ET.SubElement(case, "system-out").text = f"{c.verdict}: {detail}"
        for k, v in counts.items():
            suite.set(k, str(v))
            if k in totals:
                totals[k] += v
        suite.set("time", _seconds(suite_time))
        total_time += suite_time
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", _seconds(total_time))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(result: GateResult) -> dict[str, Any]:
    return {
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "baseline": result.baseline,
        "run": result.run,
        "counts": result.counts(),
        "policy": result.policy.model_dump(mode="json"),
        "env_diff": result.env_diff,
        "notes": result.notes,
        "harness_limited": result.harness_limited,
        "checks": [
            {
                "target": c.target,
                "identity": c.key[0],
                "step_id": c.key[1],
                "metric": c.metric,
                "rule": c.rule,
                "verdict": c.verdict,
                "baseline": _clean(c.base),
                "run": _clean(c.run),
                "change": _clean(c.change),
                "interval": [_clean(c.lo), _clean(c.hi)] if c.lo is not None else None,
                "p_value": _clean(c.p_value),
                "n_baseline": c.n_base,
                "n_run": c.n_run,
                "message": c.message,
                "interval_method": c.method or None,
                "too_few_samples": [n for n in c.notes if n.startswith("too few")],
                "harness_limited": c.target in result.harness_limited,
                "verdict_if_not_harness_limited": c.unlimited_verdict,
                "notes": c.notes,
            }
            for c in result.checks
        ],
        "mismatches": [
            {
                "identity": m.key[0],
                "step_id": m.key[1],
                "cell_id": m.cell_id,
                "side": m.side,
                "reason": m.reason,
            }
            for m in result.mismatches
        ],
    }


def to_json_text(result: GateResult) -> str:
    return json.dumps(to_json(result), indent=2) + "\n"
