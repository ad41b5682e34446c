"""``tokenbench compare``: deltas with confidence intervals across two or more runs.

Why a separate computation from the gate: ``compare`` has no policy verdicts,
only measurements; but it uses the same matching (identity + step) and the
same bootstrap (``Measurer``), so a number in the compare page equals the
number the gate would judge. The first run is the reference for every delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.gate.match import Mismatch, match_many
from harness.gate.measure import Measurer
from harness.gate.rundata import GateRun, Key
from harness.gate.stats import mann_whitney, relative_diff

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


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def compare_runs(
    runs: list[GateRun], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Comparison:
    keys, mismatches = match_many(runs)
    comp = Comparison(runs, mismatches=mismatches, confidence=confidence)
    measurer = Measurer(resamples, seed)
    ref = runs[0]
    for key in keys:
        group = ref.steps[key]
        kc = KeyComparison(key, f"{group.cell.cell_id} / {key[1]}")
        for other in runs[1:]:
            deltas: list[Delta] = []
            for metric in COMPARE_METRICS:
                a, b = measurer.measure(ref.steps[key], metric), measurer.measure(other.steps[key], metric)
                rel, lo, hi = relative_diff(a.boot, b.boot, a.point, b.point, confidence)
                p = None
                fam = metric.split("_")[0]
                if fam in ("ttft", "tpot", "itl", "e2e"):
                    pv = mann_whitney(
                        measurer.samples(ref.steps[key], fam).values,
                        measurer.samples(other.steps[key], fam).values,
                    )[0]
                    p = _nan_none(pv)
                deltas.append(
                    Delta(metric, a.point, b.point, _nan_none(rel), _nan_none(lo), _nan_none(hi), p)
                )
            kc.deltas[other.label] = deltas
        comp.keys.append(kc)
    return comp


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x * 100:+.1f}%" if pct else f"{x:.4g}"


def compare_markdown(comp: Comparison) -> str:
    ref = comp.runs[0].label
    lines = [f"## tokenbench compare (reference: `{ref}`)", ""]
    lines += [
        f"Runs: {', '.join(f'`{r.label}`' for r in comp.runs)}; intervals at {comp.confidence:.0%}.",
        "",
    ]
    for kc in comp.keys:
        for label, deltas in kc.deltas.items():
            lines += [f"### {kc.label}: `{label}` vs `{ref}`", ""]
            lines += [
                "| Metric | Reference | Run | Change | Interval | Mann-Whitney p |",
                "|---|---|---|---|---|---|",
            ]
            for d in deltas:
                mark = " **\\***" if d.significant else ""
                interval = f"[{_fmt(d.lo, True)}, {_fmt(d.hi, True)}]" if d.lo is not None else "–"
                lines.append(
                    f"| `{d.metric}` | {_fmt(d.ref)} | {_fmt(d.value)} | {_fmt(d.change, True)}{mark} | "
                    f"{interval} | {_fmt(d.p_value)} |"
                )
            lines.append("")
    if comp.mismatches:
        lines += ["### Not matched", ""] + [f"- ({m.side}) {m.describe()}" for m in comp.mismatches] + [""]
    lines.append("\\* interval excludes zero.")
    return "\n".join(lines) + "\n"
