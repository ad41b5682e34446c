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

The interval comes from :mod:`harness.gate.interval`: within-run noise, and
between-run noise (repeats pooled) when the sides hold repeats. Unless
both sides hold two or more repeats, rules on tail percentiles are
inconclusive unless the policy sets ``single_repeat_tails: within_run``:
run-to-run variation of a p95 is larger than its sampling noise, and only
repeats of that side can show it (a calm three-run baseline said nothing
about a single run taken while the machine was busier: +19 % on an A/A).

Absolute rules (``max`` / ``min``; SLOs): pass when the run's value meets the
limit, regression when the whole interval breaks it, else inconclusive (also
when the value meets the limit but too few samples bound the percentile).

A harness-limited step (the load generator was the bottleneck) turns every
verdict on it into inconclusive, and the result lists it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

from harness.gate.interval import change_interval
from harness.gate.match import Matching, Mismatch, Pair
from harness.gate.measure import Measure, Measurer
from harness.gate.policy import Policy, Rule
from harness.gate.stats import extra_samples_needed, mann_whitney, wilson_interval

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
    method: str = ""  # which noise the interval covers: within-run only, or between runs too
    notes: list[str] = field(default_factory=list)  # caveats, e.g. a percentile resting on too few samples
    unlimited_verdict: Verdict | None = None  # on a harness-limited step: the verdict it would have had
    seconds: float = 0.0  # the gate's own time evaluating this check (JUnit ``time``)


@dataclass
class GateResult:
    baseline: str
    run: str
    policy: Policy
    checks: list[Check] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    env_diff: list[str] = field(default_factory=list)
    harness_limited: dict[str, list[str]] = field(default_factory=dict)  # target → reasons
    notes: list[str] = field(default_factory=list)  # concessions made to load the inputs

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


def _signed(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _more_data(m: Measure, half: float, distance: float) -> str:
    extra = extra_samples_needed(m.n_requests, half, distance)
    if extra is None:
        return "the estimate sits on the boundary; more data would barely help"
    factor = (m.n_requests + extra) / max(m.n_requests, 1)
    reps = max(1, math.ceil(m.repeats * (factor - 1)))
    return f"about {extra} more requests per step (≈{factor:.1f}× the data, or {reps} more repeats) would settle it"


def decide(
    w: float,
    w_lo: float,
    w_hi: float,
    tol: float,
    alarm: tuple[float, float] | None = None,
) -> Verdict:
    """The relative-rule decision on the change ``w`` in the bad direction with interval [w_lo, w_hi].

    ``alarm`` is the interval widened by the policy's assumed run-to-run noise (single repeats):
    a regression or an improvement must clear it; a pass is read from the measured interval.
    """
    a_lo, a_hi = alarm if alarm is not None else (w_lo, w_hi)
    if a_lo > 0 and w > tol:
        return "regression"
    if a_hi < 0 and w < -tol:
        return "improvement"
    if w_hi <= tol:
        return "pass"
    return "inconclusive"


def _relative(pair: Pair, metric: str, rule: Rule, b: Measure, r: Measure, policy: Policy) -> list[Check]:
    checks: list[Check] = []
    ch = change_interval(b, r, policy.confidence, policy.run_to_run_noise)
    # A tail needs repeats on *both* sides: pooling assumes both sides vary alike from run to run, and a
    # single run taken while the machine was busier is exactly what a calm baseline's spread cannot show.
    single = min(b.repeats, r.repeats) < 2
    single_tail = b.tail and single and policy.single_repeat_tails == "inconclusive"
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
            method=ch.describe(),
            notes=list(ch.notes),
        )
        c.change, c.lo, c.hi = (None if math.isnan(v) else v for v in (ch.rel, ch.lo, ch.hi))
        if min(b.n_requests, r.n_requests) < policy.min_requests:
            short = policy.min_requests - min(b.n_requests, r.n_requests)
            c.message = (
                f"too few successful requests ({b.n_requests} baseline, {r.n_requests} run; policy "
                f"min_requests {policy.min_requests}); about {short} more requests per step would "
                "allow a judgement"
            )
            checks.append(c)
            continue
        if math.isnan(ch.rel) or math.isnan(ch.lo):
            c.message = "baseline value is zero or missing; a relative rule cannot judge it"
            checks.append(c)
            continue
        w = bad * ch.rel
        w_lo, w_hi = sorted((bad * ch.lo, bad * ch.hi))
        a_lo, a_hi = sorted((bad * ch.alarm_lo, bad * ch.alarm_hi))
        verdict = decide(w, w_lo, w_hi, tol, (a_lo, a_hi))
        if single_tail:
            side = "the run" if r.repeats < 2 else "the baseline"
            c.message = (
                f"{_signed(ch.rel)} ({b.repeats} baseline, {r.repeats} run repeats), but {side} has one repeat, "
                "and tail percentiles vary between runs by more than one run can show; gate with repeats on "
                "both sides (scenario repeats, several --run, a baseline saved from several runs) or set "
                "single_repeat_tails: within_run in the policy"
            )
        elif verdict == "regression":
            c.verdict, c.message = verdict, f"{_pct(round(w, 4))} worse, beyond the {_pct(tol)} tolerance"
        elif verdict == "improvement":
            c.verdict, c.message = verdict, f"{_pct(round(-w, 4))} better"
        elif verdict == "pass":
            c.verdict, c.message = verdict, f"within tolerance (worst case {_pct(round(w_hi, 4))})"
        elif not math.isfinite(w_hi) or not math.isfinite(w_lo):
            short = max((m.needed - m.n_samples for m in (b, r) if m.needed is not None), default=0)
            c.message = (
                f"the interval is unbounded: too few samples for {metric}; about {max(short, 1)} more "
                "requests per step would bound it"
            )
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
        lo, hi = r.lo, r.hi
        n = r.n_requests
    notes = [r.thin_note("run")] if r.thin else []
    for sign, limit in ((1.0, rule.max), (-1.0, rule.min)):
        if limit is None:
            continue
        shown = _pct(limit) if metric == "error_rate" else _fmt(limit)
        name = f"{'max' if sign > 0 else 'min'} {shown}{origin}"
        c = Check(
            pair.label,
            pair.key,
            metric,
            name,
            "inconclusive",
            None,
            r.point,
            None,
            lo,
            hi,
            n_run=n,
            notes=notes,
        )
        v, v_lo = sign * r.point, min(sign * lo, sign * hi)
        v_hi = max(sign * lo, sign * hi)
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
        elif v <= lim and not math.isfinite(v_hi):
            c.message = f"{_fmt(r.point)} meets {shown}, but too few samples bound this percentile"
        elif v <= lim:
            c.verdict, c.message = "pass", f"{_fmt(r.point)} meets the limit {shown}"
        else:
            c.message = f"{_fmt(r.point)} breaks {shown} but could be noise; " + _more_data(
                r, v - v_lo, v - lim
            )
        checks.append(c)
    return checks


def _harness_limited(pair: Pair, checks: list[Check]) -> list[str]:
    """Every verdict on a harness-limited step becomes inconclusive: the client set those numbers."""
    reasons = [f"baseline {x}" if not x.startswith("baseline") else x for x in pair.base.limited]
    reasons += [f"run {x}" for x in pair.run.limited]
    if not reasons:
        return []
    for c in checks:
        was = c.unlimited_verdict = c.verdict
        c.verdict = "inconclusive"
        c.message = f"harness-limited ({'; '.join(reasons)}), so this measures the load generator; was {was}: {c.message}"
    return reasons


def _slo_rules(scenario: dict | None) -> dict[str, Rule]:
    slo = (scenario or {}).get("slo") or {}
    rules: dict[str, Rule] = {}
    for name, value in slo.items():
        if value is not None and name.endswith("_ms"):
            rules[name.removesuffix("_ms")] = Rule(max=float(value))
    return rules


def _share_time(checks: list[Check], seconds: float) -> None:
    """Split the time one rule took between the checks it produced (a rule can give two)."""
    for c in checks:
        c.seconds = seconds / len(checks)


def evaluate(
    matching: Matching, policy: Policy, baseline_label: str, run_label: str, scenario: dict | None = None
) -> GateResult:
    """Apply every rule to every matched step. Unmatched baseline steps make the gate inconclusive."""
    from harness.gate.capacity import CAPACITY_METRICS, capacity_checks

    result = GateResult(baseline_label, run_label, policy, mismatches=list(matching.mismatches))
    measurer = Measurer(policy.resamples, policy.seed, policy.confidence)
    slo = _slo_rules(scenario) if policy.slo_from_scenario else {}
    for pair in matching.pairs:
        start = len(result.checks)
        for metric, rule in policy.rules.items():
            if metric in CAPACITY_METRICS:
                continue  # one number per cell, judged below
            began, first = time.perf_counter(), len(result.checks)
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
            _share_time(result.checks[first:], time.perf_counter() - began)
        for metric, rule in slo.items():
            began, first = time.perf_counter(), len(result.checks)
            result.checks += _absolute(
                pair, metric, rule, measurer.measure(pair.run, metric), policy, " (SLO)"
            )
            _share_time(result.checks[first:], time.perf_counter() - began)
        limited = _harness_limited(pair, result.checks[start:])
        if limited:
            result.harness_limited[pair.label] = limited
    for metric, rule in policy.rules.items():
        if metric in CAPACITY_METRICS:
            result.checks += capacity_checks(matching, metric, rule)
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
