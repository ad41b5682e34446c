"""SLO capacity search: the highest open-loop rate whose SLO attainment meets a target.

Why: "how many requests per second can this configuration serve while p99 TTFT
<= X and p99 TPOT <= Y?" is the first question a platform team asks, and a fixed
list of rates answers it only to the spacing of that list. ``workload.steps.search``
brackets the capacity between a passing and a failing rate (doubling up from
``min_rate``), then bisects until the bracket is within ``precision`` (relative).

Every probe is an ordinary open-loop Poisson step (``search-r3.25``) with its own
records, kept in the run. The search is deterministic given its probes' verdicts,
so a resumed cell replays the probes it already has and continues where it stopped.
A probe the harness could not drive faithfully (harness-limited) or one that failed
requests stops the search with the reason: its verdict would not be the server's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.bounds import MAX_RATE, MIN_RATE, FieldProblem
from harness.results import Capacity, CellResult, StepMetrics
from harness.slo import Slo

if TYPE_CHECKING:
    import pandas as pd

    from harness.matrix import Step
    from harness.scenario import Scenario

PROBE_PREFIX = "search-"


class SearchSpec(BaseModel):
    """``workload.steps.search``: bracket then bisect over Poisson rates (runs after fixed steps)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    slo: Slo | None = Field(
        default=None, description="per-request limits of a probe; default: the scenario's slo block"
    )
    target: float = Field(default=0.99, gt=0, le=1, description="SLO attainment a passing probe needs")
    min_rate: float = Field(gt=0, description="requests/s of the first probe (the bracket's floor)")
    max_rate: float = Field(gt=0, description="requests/s the search never probes above")
    precision: float = Field(
        default=0.05, gt=0, lt=1, description="stop when (fail - pass) / pass is at most this"
    )
    max_steps: int = Field(default=12, ge=1, le=100, description="the most probes per cell")
    max_error_rate: float = Field(
        default=0.05, ge=0, lt=1, description="a probe failing more requests stops the search"
    )

    @model_validator(mode="after")
    def _range(self) -> SearchSpec:
        for key in ("min_rate", "max_rate"):
            value = getattr(self, key)
            if not MIN_RATE <= value <= MAX_RATE:
                raise FieldProblem(key, value, f"must be within [{MIN_RATE}, {MAX_RATE:.0f}] requests/s")
        if self.max_rate <= self.min_rate:
            raise FieldProblem("max_rate", self.max_rate, f"must be above min_rate ({self.min_rate:g})")
        return self


def offered_attainment(m: StepMetrics) -> float | None:
    """SLO attainment over every arrival the probe offered: one never sent (the client's pool was
    busy to the end of the step) was not served within any SLO, so it counts as a miss. Without
    this, a probe past saturation would be judged only on the requests that got through."""
    if m.slo_attainment is None or m.requests_total == 0:
        return None
    return m.slo_attainment * m.requests_total / (m.requests_total + m.harness.unsent)


def probe_id(rate: float) -> str:
    """A probe's step id (and folder): ``search-r3.25``; stable, so resume finds it."""
    return f"{PROBE_PREFIX}r{rate:.4g}"


def is_probe(step_id: str) -> bool:
    return step_id.startswith(PROBE_PREFIX)


def _round(rate: float) -> float:
    """Rates to 4 significant digits: the id and the rate probed are then the same number."""
    return float(f"{rate:.4g}")


@dataclass
class CapacitySearch:
    """The search's state: ask :meth:`next_rate`, run that probe, :meth:`observe` its metrics.

    ``passed`` is the highest rate that met the target, ``failed`` the lowest that did not.
    Bracketing doubles from ``min_rate`` until a probe fails (or ``max_rate`` passes);
    bisection then probes the geometric midpoint, which suits rates spanning decades.
    """

    spec: SearchSpec
    probes: list[StepMetrics] = field(default_factory=list)
    passed: StepMetrics | None = None
    failed: float | None = None
    stop_reason: str | None = None
    stop: str = "not_finished"  # Capacity.stop: the reason's kind, for the gate and the report
    _next: float | None = None

    def __post_init__(self) -> None:
        self._next = _round(self.spec.min_rate)

    def next_rate(self) -> float | None:
        """The next rate to probe, or ``None`` when the search has stopped (see ``stop_reason``)."""
        return None if self.stop_reason else self._next

    def verdict(self, m: StepMetrics) -> bool:
        """Did this probe meet the target? (Offered attainment, below; none measured: no.)"""
        attained = offered_attainment(m)
        return attained is not None and attained >= self.spec.target

    def observe(self, m: StepMetrics) -> None:
        """Take a finished probe's metrics and decide the next rate or the stop reason."""
        s = self.spec
        self.probes.append(m)
        if m.harness.limited:
            why = "; ".join(m.harness.reasons) or "harness-limited"
            self._stop(
                "harness_limited",
                f"probe {m.step_id} was harness-limited ({why}): its verdict is the client's",
            )
            return
        if m.error_rate > s.max_error_rate:
            self._stop(
                "errors",
                f"probe {m.step_id} failed {m.error_rate:.1%} of requests "
                f"(> search.max_error_rate {s.max_error_rate:.1%})",
            )
            return
        rate = m.target
        if self.verdict(m):
            if self.passed is None or rate > self.passed.target:
                self.passed = m
        elif self.failed is None or rate < self.failed:
            self.failed = rate
        if self.failed is None:  # still bracketing upwards
            if rate >= _round(s.max_rate):
                self._stop(
                    "above_max_rate", f"bracket not found: capacity >= max_rate ({s.max_rate:g} req/s passed)"
                )
                return
            self._next = _round(min(rate * 2, s.max_rate))
        elif self.passed is None:
            self._stop(
                "below_min_rate", f"bracket not found: capacity < min_rate ({s.min_rate:g} req/s failed)"
            )
            return
        else:
            lo, hi = self.passed.target, self.failed
            if (hi - lo) / lo <= s.precision:
                self._stop("converged", f"converged: within precision {s.precision:g} ({lo:g}..{hi:g} req/s)")
                return
            mid = _round((lo * hi) ** 0.5)
            if mid <= lo or mid >= hi:  # 4 significant digits cannot split it further
                self._stop("converged", f"converged: {lo:g}..{hi:g} req/s cannot be split further")
                return
            self._next = mid
        if len(self.probes) >= s.max_steps:
            self._stop(
                "max_steps", f"max_steps reached ({s.max_steps} probes) before precision {s.precision:g}"
            )

    def _stop(self, kind: str, reason: str) -> None:
        self.stop, self.stop_reason = kind, reason
        self._next = None

    def capacity(self, slo: dict[str, float]) -> Capacity:
        """The result: the highest passing probe's rate and its output tokens/s (None if none passed)."""
        p = self.passed
        return Capacity(
            req_s=p.target if p else None,
            tok_s=p.output_tok_s if p else None,
            upper_req_s=self.failed,
            slo=slo,
            target=self.spec.target,
            precision=self.spec.precision,
            probes=[m.step_id for m in self.probes],
            stop=self.stop,
            stop_reason=self.stop_reason or "not finished",
        )


def search_slo(spec: SearchSpec, scenario_slo: Slo) -> Slo:
    """The SLO probes are judged by: the search's own, else the scenario's."""
    return spec.slo if spec.slo is not None else scenario_slo


def search_problems(spec: SearchSpec | None, scenario_slo: Slo, duration_s: float | None) -> list[str]:
    """What makes a search unrunnable, found at ``validate`` (each names the field and value)."""
    if spec is None:
        return []
    problems: list[str] = []
    if not search_slo(spec, scenario_slo).per_request_limits():
        problems.append(
            "workload.steps.search.slo: no TTFT/TPOT/E2E limit in it or in the scenario's slo block; "
            "the search judges probes by SLO attainment (got none)"
        )
    if duration_s is not None and spec.min_rate * duration_s < 1:
        problems.append(
            f"workload.steps.search.min_rate: one arrival every {1 / spec.min_rate:.3g} s is longer "
            f"than duration_s {duration_s:g}; a probe would measure no request (got {spec.min_rate:g})"
        )
    return problems


def resumed_search(spec: SearchSpec, earlier: list[StepMetrics]) -> tuple[CapacitySearch, list[StepMetrics]]:
    """A search with the probes of an earlier attempt replayed (the search is deterministic).

    Returns the search and the earlier probes it did not reach (none, unless the spec changed).
    """
    search = CapacitySearch(spec)
    by_id = {m.step_id: m for m in earlier if is_probe(m.step_id)}
    while (rate := search.next_rate()) is not None and probe_id(rate) in by_id:
        search.observe(by_id.pop(probe_id(rate)))
    return search, list(by_id.values())


def run_search(
    scenario: Scenario,
    result: CellResult,
    measure: Callable[[Step, int, Slo], tuple[pd.DataFrame, StepMetrics]],
    first_index: int,
    progress: Callable[[str], None],
    cell_id: str,
) -> None:
    """Run a cell's capacity search: probe, observe, repeat; ``result.capacity`` after every probe.

    ``measure`` runs one step and records its metrics in ``result`` (the run's own step code);
    probes of an earlier attempt (resume) are replayed, not re-run. A probe that fails
    ``abort_error_rate`` of its requests still fails the cell, after the capacity is recorded.
    """
    from harness.matrix import Step
    from harness.stepcheck import check_step

    spec = scenario.workload.steps.search
    assert spec is not None
    slo = search_slo(spec, scenario.slo)
    limits = slo.per_request_limits()
    search, _ = resumed_search(spec, result.steps)
    while (rate := search.next_rate()) is not None:
        step = Step(probe_id(rate), "rate", rate)
        frame, metrics = measure(step, first_index + len(search.probes), slo)
        search.observe(metrics)
        result.capacity = search.capacity(limits)
        verdict = "pass" if search.verdict(metrics) else "fail"
        offered = offered_attainment(metrics)
        attained = "-" if offered is None else f"{offered:.1%}"
        unsent = f", {metrics.harness.unsent} never sent" if metrics.harness.unsent else ""
        progress(f"[{cell_id}] search: {step.step_id} attainment {attained}{unsent} ({verdict})")
        check_step(frame, metrics, scenario.workload.abort_error_rate)
    result.capacity = search.capacity(limits)
    cap = result.capacity
    found = f"{cap.req_s:g} req/s, {cap.tok_s:.1f} out tok/s" if cap.req_s is not None else "none"
    progress(f"[{cell_id}] capacity: {found} ({cap.stop_reason})")
