"""Gate on SLO capacity (``capacity_req_s``): did the highest rate that meets the SLO drop?

Why its own rule: capacity is one number per cell, found by a search (harness/search.py),
not a distribution of request samples, so it has no bootstrap. Its uncertainty is the
search's bracket instead: the true capacity lies in [``req_s``, ``upper_req_s``). The
relative change is judged on the interval between the brackets, worst end to worst end:

* regression – the run's whole bracket lies below the baseline's and the point drop
  (run ``req_s`` / baseline ``req_s`` − 1) exceeds the tolerance;
* pass – even the worst pairing (run's lower end against the baseline's upper end)
  stays within the tolerance, so a tolerance narrower than the search's precision
  can only be inconclusive;
* inconclusive – anything else, and every search that stopped on a harness-limited
  probe, on errors, or before it finished (its number is not the server's capacity).
"""

from __future__ import annotations

import math

from harness.gate.match import Matching
from harness.gate.policy import Rule
from harness.gate.verdict import Check, decide
from harness.results import Capacity, CellResult

CAPACITY_METRICS = ("capacity_req_s",)
TRUSTED_STOPS = ("converged", "max_steps", "above_max_rate", "below_min_rate")


def _bracket(cells: list[CellResult]) -> tuple[float, float, Capacity] | None:
    """The union of the cells' brackets (repeats of one configuration), and the first capacity."""
    caps = [c.capacity for c in cells if c.capacity is not None]
    if not caps:
        return None
    lo = min(c.req_s or 0.0 for c in caps)
    hi = max(math.inf if c.upper_req_s is None else c.upper_req_s for c in caps)
    return lo, hi, caps[0]


def _untrusted(cap: Capacity, side: str) -> str | None:
    return None if cap.stop in TRUSTED_STOPS else f"{side} search stopped early: {cap.stop_reason}"


def capacity_checks(matching: Matching, metric: str, rule: Rule) -> list[Check]:
    """One check per configuration identity that has a capacity on both sides."""
    checks: list[Check] = []
    for ident, (base_cells, run_cells) in matching.capacities.items():
        b, r = _bracket(base_cells), _bracket(run_cells)
        if b is None or r is None:
            continue
        target = f"{run_cells[0].cell_id} / capacity"
        key = (ident, "capacity")
        (bl, bu, bcap), (rl, ru, rcap) = b, r
        if rule.max_decrease is not None:
            tol = rule.max_decrease
            text = f"max_decrease {tol * 100:g}%"
            check = Check(target, key, metric, text, "inconclusive", base=bl, run=rl)
            why = _untrusted(bcap, "baseline") or _untrusted(rcap, "run")
            if bl <= 0:
                check.message = "the baseline found no passing rate (capacity < min_rate): no ratio"
            elif why:
                check.change = rl / bl - 1
                check.message = why
            else:
                check.change = rl / bl - 1
                check.lo = rl / bu - 1 if math.isfinite(bu) else -1.0
                check.hi = ru / bl - 1 if math.isfinite(ru) else math.inf
                # decide() takes the change in the bad direction: a decrease of capacity.
                check.verdict = decide(-check.change, -check.hi, -check.lo, tol)
                check.message = (
                    f"capacity {rl:g} req/s (bracket {rl:g}..{ru:g}) vs baseline {bl:g} "
                    f"(bracket {bl:g}..{bu:g}); precision {rcap.precision:g}"
                )
            check.method = "search bracket"
            checks.append(check)
        if rule.min is not None:
            verdict = "pass" if rl >= rule.min else ("regression" if ru <= rule.min else "inconclusive")
            why = _untrusted(rcap, "run")
            checks.append(
                Check(
                    target,
                    key,
                    metric,
                    f"min {rule.min:g}",
                    "inconclusive" if why and verdict != "pass" else verdict,  # type: ignore[arg-type]
                    run=rl,
                    lo=rl,
                    hi=ru,
                    message=why or f"capacity bracket {rl:g}..{ru:g} req/s against min {rule.min:g}",
                    method="search bracket",
                )
            )
    return checks
