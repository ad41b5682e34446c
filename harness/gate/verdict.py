"""Rules + measurements → a verdict per rule, and one for the whole gate.

Decision rules (documented for users in ``default_policy.yaml``):

Relative rules (``max_increase`` / ``max_decrease``), on the relative change
``w`` in the *bad* direction with interval [lo, hi] and tolerance ``tol``:

* regression   — lo > 0 and w > tol: the change is real *and* too big;
* improvement  — hi < 0 and w < −tol: the mirror image;
* pass         — hi ≤ tol: even the pessimistic end is within tolerance;
* inconclusive — otherwise; we say roughly how much more data settles it.

Requiring significance *and* size is what keeps the gate quiet on noise (a
tiny-but-real shift is not a regression) while still catching a ≥10 % change
once the interval is narrower than the distance to the boundary.

Absolute rules (``max`` / ``min``; SLOs): pass when the run's value meets the
limit, regression when the whole interval breaks it, else inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from harness.gate.match import Matching, Mismatch, Pair
from harness.gate.measure import Measure, Measurer
from harness.gate.policy import Policy, Rule
from harness.gate.stats import (
    extra_samples_needed,
    mann_whitney,
    percentile_interval,
    relative_diff,
    wilson_interval,
)

Verdict = Literal["pass", "regression", "improvement", "inconclusive"]
ORDER: dict[str, int] = {"regression": 0, "inconclusive": 1, "improvement": 2, "pass": 3}
EXIT_CODES: dict[str, int] = {"pass": 0, "improvement": 0, "regression": 1, "inconclusive": 3}


@dataclass
class Check:
    """One rule applied to one matched step."""

    target: str  # "cell / step"
    key: tuple[str, str]
    metric: str
    rule: str  # e.g. "max_increase 10%"
    verdict: Verdict
    base: float | None = None
    run: float | None = None
    change: float | None = None  # relative change run/base − 1
    lo: float | None = None  # interval of the change (relative rules) or of the run value (absolute)
    hi: float | None = None
    p_value: float | None = None
    n_base: int = 0
    n_run: int = 0
    message: str = ""


@dataclass
class GateResult:
    baseline: str
    run: str
    policy: Policy
    checks: list[Check] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    env_diff: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        if any(c.verdict == "regression" for c in self.checks):
            return "regression"
        if any(c.verdict == "inconclusive" for c in self.checks):
            return "inconclusive"
        return "pass"

    @property
    def exit_code(self) -> int:
        v = self.verdict
        if v == "inconclusive" and not self.policy.inconclusive_fails:
            return 0
        return EXIT_CODES[v]

    def counts(self) -> dict[str, int]:
        return {v: sum(1 for c in self.checks if c.verdict == v) for v in ORDER}


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _more_data(m: Measure, half: float, distance: float) -> str:
    extra = extra_samples_needed(m.n_requests, half, distance)
    if extra is None:
        return "the estimate sits on the boundary; more data would barely help"
    factor = (m.n_requests + extra) / max(m.n_requests, 1)
    reps = max(1, math.ceil(m.repeats * (factor - 1)))
    return f"about {extra} more requests per step (≈{factor:.1f}× the data, or {reps} more repeats) would settle it"


def _relative(pair: Pair, metric: str, rule: Rule, b: Measure, r: Measure, policy: Policy) -> list[Check]:
    checks: list[Check] = []
    for bad, tol in ((1.0, rule.max_increase), (-1.0, rule.max_decrease)):
        if tol is None:
            continue
        name = f"{'max_increase' if bad > 0 else 'max_decrease'} {_pct(tol)}"
        c = Check(
            pair.label,
            pair.key,
            metric,
            name,
            "inconclusive",
            b.point,
            r.point,
            n_base=b.n_requests,
            n_run=r.n_requests,
        )
        rel, lo, hi = relative_diff(b.boot, r.boot, b.point, r.point, policy.confidence)
        c.change, c.lo, c.hi = (None if math.isnan(v) else v for v in (rel, lo, hi))
        if min(b.n_requests, r.n_requests) < policy.min_requests:
            short = policy.min_requests - min(b.n_requests, r.n_requests)
            c.message = (
                f"too few successful requests ({b.n_requests} baseline, {r.n_requests} run; policy "
                f"min_requests {policy.min_requests}); about {short} more requests per step would "
                "allow a judgement"
            )
            checks.append(c)
            continue
        if math.isnan(rel) or math.isnan(lo):
            c.message = "baseline value is zero or missing; a relative rule cannot judge it"
            checks.append(c)
            continue
        w = bad * rel
        w_lo, w_hi = sorted((bad * lo, bad * hi))
        if w_lo > 0 and w > tol:
            c.verdict, c.message = (
                "regression",
                f"{_pct(round(w, 4))} worse, beyond the {_pct(tol)} tolerance",
            )
        elif w_hi < 0 and w < -tol:
            c.verdict, c.message = "improvement", f"{_pct(round(-w, 4))} better"
        elif w_hi <= tol:
            c.verdict, c.message = "pass", f"within tolerance (worst case {_pct(round(w_hi, 4))})"
        elif w > tol:
            c.message = f"looks {_pct(round(w, 4))} worse but could be noise; " + _more_data(r, w - w_lo, w)
        else:
            c.message = (
                f"cannot rule out more than {_pct(tol)} worse (worst case {_pct(round(w_hi, 4))}); "
                + _more_data(r, w_hi - w, tol - w)
            )
        checks.append(c)
    return checks


def _absolute(pair: Pair, metric: str, rule: Rule, r: Measure, policy: Policy, origin: str) -> list[Check]:
    checks: list[Check] = []
    if metric == "error_rate":
        lo, hi = wilson_interval(r.errors, r.n_total, policy.confidence)
        n = r.n_total
    else:
        lo, hi = percentile_interval(r.boot, policy.confidence)
        n = r.n_requests
    for sign, limit in ((1.0, rule.max), (-1.0, rule.min)):
        if limit is None:
            continue
        shown = _pct(limit) if metric == "error_rate" else _fmt(limit)
        name = f"{'max' if sign > 0 else 'min'} {shown}{origin}"
        c = Check(pair.label, pair.key, metric, name, "inconclusive", None, r.point, None, lo, hi, n_run=n)
        v, v_lo = sign * r.point, min(sign * lo, sign * hi)
        lim = sign * limit
        if n < policy.min_requests:
            c.message = (
                f"too few requests ({n}; policy min_requests {policy.min_requests}); about "
                f"{policy.min_requests - n} more requests per step would allow a judgement"
            )
        elif math.isnan(v):
            c.message = "no value measured"
        elif v_lo > lim:
            c.verdict, c.message = (
                "regression",
                f"{_fmt(r.point)} breaks the limit {shown} (whole interval beyond it)",
            )
        elif v <= lim:
            c.verdict, c.message = "pass", f"{_fmt(r.point)} meets the limit {shown}"
        else:
            c.message = f"{_fmt(r.point)} breaks {shown} but could be noise; " + _more_data(
                r, v - v_lo, v - lim
            )
        checks.append(c)
    return checks


def _slo_rules(scenario: dict | None) -> dict[str, Rule]:
    slo = (scenario or {}).get("slo") or {}
    rules: dict[str, Rule] = {}
    for name, value in slo.items():
        if value is not None and name.endswith("_ms"):
            rules[name.removesuffix("_ms")] = Rule(max=float(value))
    return rules


def evaluate(
    matching: Matching, policy: Policy, baseline_label: str, run_label: str, scenario: dict | None = None
) -> GateResult:
    """Apply every rule to every matched step. Unmatched baseline steps make the gate inconclusive."""
    result = GateResult(baseline_label, run_label, policy, mismatches=list(matching.mismatches))
    measurer = Measurer(policy.resamples, policy.seed)
    slo = _slo_rules(scenario) if policy.slo_from_scenario else {}
    for pair in matching.pairs:
        for metric, rule in policy.rules.items():
            b, r = measurer.measure(pair.base, metric), measurer.measure(pair.run, metric)
            p_value = None
            if "_" in metric and metric.split("_")[0] in ("ttft", "tpot", "itl", "e2e"):
                fam = metric.split("_")[0]
                p = mann_whitney(
                    measurer.samples(pair.base, fam).values, measurer.samples(pair.run, fam).values
                )[0]
                p_value = None if math.isnan(p) else p
            if rule.max_increase is not None or rule.max_decrease is not None:
                for c in _relative(pair, metric, rule, b, r, policy):
                    c.p_value = p_value
                    result.checks.append(c)
            if rule.max is not None or rule.min is not None:
                result.checks += _absolute(pair, metric, Rule(max=rule.max, min=rule.min), r, policy, "")
        for metric, rule in slo.items():
            result.checks += _absolute(
                pair, metric, rule, measurer.measure(pair.run, metric), policy, " (SLO)"
            )
    for key in matching.failed_in_run:
        mm = next(m for m in matching.mismatches if m.key == key)
        result.checks.append(
            Check(f"{mm.cell_id} / {key[1]}", key, "cell_status", "cell ran", "regression", message=mm.reason)
        )
    for mm in matching.mismatches:
        if mm.side == "baseline" and mm.key not in matching.failed_in_run:
            result.checks.append(
                Check(
                    f"{mm.cell_id} / {mm.key[1]}",
                    mm.key,
                    "coverage",
                    "measured",
                    "inconclusive",
                    message=mm.reason,
                )
            )
    result.checks.sort(key=lambda c: (ORDER[c.verdict], c.target, c.metric))
    return result
