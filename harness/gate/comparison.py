"""``tokenbench compare``: deltas with confidence intervals across two or more runs.

Why it shares the gate's machinery: ``compare`` shows measurements, but a
reader looks at colours and the headline first, so those must mean what the
gate would decide. Deltas use the same matching (identity + step), the same
measurement (``Measurer``) and the same change interval
(:mod:`harness.gate.interval`); each other run is also evaluated against the
reference with a policy (the shipped default unless ``--policy``), and a
cell is coloured by that rule's verdict, never by bare significance (a real
+0.1 % is no regression under a 10 % tolerance). The first run is the
reference for every delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.gate.configdiff import ConfigChange, config_diff
from harness.gate.interval import change_interval
from harness.gate.match import Matching, Mismatch, Pair, match_many
from harness.gate.measure import Measurer
from harness.gate.policy import Policy, load_policy
from harness.gate.rundata import GateRun, Key
from harness.gate.stats import mann_whitney
from harness.gate.verdict import ORDER, GateResult, evaluate

COMPARE_METRICS: tuple[str, ...] = (
    "ttft_p50",
    "ttft_p95",
    "ttft_p99",
    "tpot_p50",
    "tpot_p95",
    "itl_p50",
    "itl_p95",
    "e2e_p50",
    "e2e_p95",
    "output_tok_s",
    "request_throughput",
    "error_rate",
)


@dataclass
class Delta:
    metric: str
    ref: float
    value: float
    change: float | None
    lo: float | None
    hi: float | None
    p_value: float | None
    verdict: str | None = None  # the policy rule's verdict on this metric; None: no rule for it
    rule: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. a percentile resting on too few samples
    method: str = ""

    @property
    def significant(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


@dataclass
class KeyComparison:
    key: Key
    label: str
    deltas: dict[str, list[Delta]] = field(default_factory=dict)  # run label → deltas vs the first run


@dataclass
class Comparison:
    runs: list[GateRun]
    keys: list[KeyComparison] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    confidence: float = 0.95
    policy: Policy | None = None
    results: dict[str, GateResult] = field(default_factory=dict)  # run label → gate verdict vs reference
    config: dict[str, list[ConfigChange]] = field(default_factory=dict)  # run label → what differs
    notes: list[str] = field(default_factory=list)

    def verdict_line(self) -> str:
        """One line for the top of the page: each run's verdict against the reference, worst first."""
        if not self.results:
            return "Verdict: nothing matched, so nothing was judged."
        parts = []
        for label, res in self.results.items():
            bad = [c for c in res.checks if c.verdict == res.verdict and res.verdict != "pass"]
            detail = ""
            if bad:
                c = bad[0]
                change = f" {c.change * 100:+.1f}%" if c.change is not None else ""
                more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                detail = f" ({c.metric}{change} on {c.target}{more})"
            parts.append(f"{label}: {res.verdict}{detail}")
        return f"Verdict vs {self.runs[0].label}: " + "; ".join(parts)


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def compare_runs(
    runs: list[GateRun],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    policy: Policy | None = None,
) -> Comparison:
    policy = policy or load_policy().model_copy(
        update={"confidence": confidence, "resamples": resamples, "seed": seed}
    )
    keys, mismatches = match_many(runs)
    comp = Comparison(runs, mismatches=mismatches, confidence=policy.confidence, policy=policy)
    comp.notes = [n for r in runs for n in r.notes]
    measurer = Measurer(policy.resamples, policy.seed, policy.confidence)
    ref = runs[0]
    for other in runs[1:]:
        comp.config[other.label] = config_diff(ref, other)
        if keys:
            matching = Matching(pairs=[Pair(k, ref.steps[k], other.steps[k]) for k in keys])
            comp.results[other.label] = evaluate(matching, policy, ref.label, other.label, other.scenario)
    for key in keys:
        group = ref.steps[key]
        kc = KeyComparison(key, f"{group.cell.cell_id} / {key[1]}")
        for other in runs[1:]:
            checks = comp.results[other.label].checks
            deltas: list[Delta] = []
            for metric in COMPARE_METRICS:
                a, b = measurer.measure(ref.steps[key], metric), measurer.measure(other.steps[key], metric)
                ch = change_interval(a, b, policy.confidence)
                p = None
                fam = metric.split("_")[0]
                if fam in ("ttft", "tpot", "itl", "e2e"):
                    pv = mann_whitney(
                        measurer.samples(ref.steps[key], fam).values,
                        measurer.samples(other.steps[key], fam).values,
                    )[0]
                    p = _nan_none(pv)
                d = Delta(metric, a.point, b.point, _nan_none(ch.rel), _nan_none(ch.lo), _nan_none(ch.hi), p)
                d.notes, d.method = list(ch.notes), ch.describe()
                ruled = sorted(
                    (c for c in checks if c.key == key and c.metric == metric),
                    key=lambda c: ORDER[c.verdict],
                )
                if ruled:
                    d.verdict, d.rule = ruled[0].verdict, ruled[0].rule
                    if ruled[0].verdict == "inconclusive":
                        d.notes.append(ruled[0].message)
                deltas.append(d)
            kc.deltas[other.label] = deltas
        comp.keys.append(kc)
    return comp


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is not None and math.isinf(x):
        return "+∞ (unbounded)" if x > 0 else "−∞"
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x * 100:+.1f}%" if pct else f"{x:.4g}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def compare_markdown(comp: Comparison) -> str:
    ref = comp.runs[0].label
    lines = [f"## tokenbench compare (reference: `{ref}`)", ""]
    lines += [
        f"**{comp.verdict_line()}**",
        "",
        f"Runs: {', '.join(f'`{r.label}`' for r in comp.runs)}; intervals at {comp.confidence:.0%}.",
        "",
    ]
    lines += [f"- note: {n}" for n in comp.notes] + ([""] if comp.notes else [])
    for label, changes in comp.config.items():
        if changes:
            lines += [
                f"### Configuration: `{label}` vs `{ref}`",
                "",
                "| Field | Reference | Run |",
                "|---|---|---|",
            ]
            lines += [f"| {_md(c.path)} | {_md(c.ref)} | {_md(c.other)} |" for c in changes] + [""]
    for kc in comp.keys:
        for label, deltas in kc.deltas.items():
            lines += [f"### {kc.label}: `{label}` vs `{ref}`", ""]
            lines += [
                "| Metric | Reference | Run | Change | Interval | Mann-Whitney p | Policy |",
                "|---|---|---|---|---|---|---|",
            ]
            for d in deltas:
                mark = " **\\***" if d.significant else ""
                interval = f"[{_fmt(d.lo, True)}, {_fmt(d.hi, True)}]" if d.lo is not None else "–"
                policy = f"{d.verdict} ({d.rule})" if d.verdict else "no rule"
                thin = " ⚠ too few samples" if any(n.startswith("too few samples") for n in d.notes) else ""
                lines.append(
                    f"| `{d.metric}` | {_fmt(d.ref)} | {_fmt(d.value)} | {_fmt(d.change, True)}{mark} | "
                    f"{interval}{thin} | {_fmt(d.p_value)} | {_md(policy)} |"
                )
            lines.append("")
            thin_notes = sorted({n for d in deltas for n in d.notes if n.startswith("too few samples")})
            lines += [f"- {_md(n)}" for n in thin_notes] + ([""] if thin_notes else [])
    if comp.mismatches:
        lines += ["### Not matched", ""] + [f"- ({m.side}) {m.describe()}" for m in comp.mismatches] + [""]
    lines.append("\\* interval excludes zero; the Policy column is the gate's verdict under its tolerance.")
    return "\n".join(lines) + "\n"
