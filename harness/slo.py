"""The ``slo:`` block: latency limits that goodput, SLO attainment and the capacity search judge by.

Its own module because the scenario, the metrics and the capacity search all read it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Slo(BaseModel):
    """Per-request latency limits: goodput counts the requests that meet every one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ttft_p99_ms: float | None = Field(default=None, gt=0)
    ttft_p95_ms: float | None = Field(default=None, gt=0)
    tpot_p99_ms: float | None = Field(default=None, gt=0)
    tpot_p95_ms: float | None = Field(default=None, gt=0)
    itl_p99_ms: float | None = Field(default=None, gt=0)
    e2e_p99_ms: float | None = Field(default=None, gt=0)

    def per_request_limits(self) -> dict[str, float]:
        """Per-request limits for goodput: a request is 'good' if its own TTFT/TPOT/E2E meet these."""
        limits: dict[str, float] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                metric = name.split("_")[0]
                limits[metric] = min(limits.get(metric, float("inf")), value)
        return limits
