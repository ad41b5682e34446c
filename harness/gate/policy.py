"""Gate policies: which metrics may move how far before a change counts as a regression.

Why YAML + pydantic: the policy is committed next to the baseline and edited
by people, so a typo (``ttft_p59``, ``max_increse``) must fail loudly with the
file, field and value instead of silently disabling a rule.

Rule kinds, per metric:

* ``max_increase: 10%`` – the run may be at most 10 % above the baseline;
* ``max_decrease: 5%`` – the run may be at most 5 % below the baseline;
* ``max: 0.5%`` / ``min: 100`` – absolute limits on the run's own value
  (SLO checks; latencies in ms, rates per second, ``error_rate`` a fraction).

``capacity_req_s`` (a cell's SLO capacity search, ``workload.steps.search``) takes
``max_decrease`` and ``min``, judged on the search's bracket (harness/gate/capacity.py).

``single_repeat_tails`` says what a relative rule on a tail percentile (p90,
p95, p99, max) does when either side has a single repeat, so its run-to-run
variation is unknown: ``inconclusive`` (default; a rerun of the same
configuration moved a p95 by 20 %) or ``within_run`` (judge on the noise
that can be measured; for tolerances wide enough to absorb run-to-run
variation).

``run_to_run_noise`` (default 5 %, measured for vLLM-CPU reruns here) is the relative run-to-run spread assumed
for a single-run value when too few repeats exist to measure it (fewer than
three between the two sides): a regression or improvement must clear it as
well as the within-run interval; a pass is still read from the measured
interval. ``python -m harness.gate.aa`` prints the spread a machine really
shows; set the policy from that. ``0`` turns the assumption off.

Percentages may be written ``10%`` or as fractions (``0.1``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.gate.samples import LATENCY_FAMILIES, RATE_METRICS
from harness.gate.stats import STATS
from harness.yamlfile import read_yaml

POLICY_VERSION = 1


class PolicyError(ValueError):
    """A policy that cannot be used. The message names file, field and value."""


def metric_names() -> list[str]:
    lat = [f"{f}_{s}" for f in LATENCY_FAMILIES for s in STATS]
    return lat + list(RATE_METRICS) + ["error_rate", "capacity_req_s"]


def higher_is_better(metric: str) -> bool:
    return metric in RATE_METRICS or metric == "capacity_req_s"


def _fraction(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"expected a number or a percentage like '10%', got {value!r}") from None
    return value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_increase: float | None = Field(default=None, ge=0)
    max_decrease: float | None = Field(default=None, ge=0)
    max: float | None = None
    min: float | None = None

    @field_validator("max_increase", "max_decrease", "max", "min", mode="before")
    @classmethod
    def _pct(cls, v: Any) -> Any:
        return _fraction(v)

    @model_validator(mode="after")
    def _non_empty(self) -> Rule:
        if all(v is None for v in (self.max_increase, self.max_decrease, self.max, self.min)):
            raise ValueError("a rule needs at least one of max_increase, max_decrease, max, min")
        return self


class Policy(BaseModel):
    """A whole gate policy. Defaults are the shipped ``default_policy.yaml``'s settings."""

    model_config = ConfigDict(extra="forbid")

    version: int = POLICY_VERSION
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    resamples: int = Field(default=2000, ge=200, le=20000)
    seed: int = 0
    min_requests: int = Field(
        default=30, ge=2, description="fewer successful requests per side → inconclusive"
    )
    inconclusive_fails: bool = Field(default=True, description="exit 3 on inconclusive; false → exit 0")
    slo_from_scenario: bool = Field(default=True, description="add absolute checks from the scenario's slo")
    single_repeat_tails: Literal["inconclusive", "within_run"] = Field(
        default="inconclusive",
        description="tail rules when a side has one repeat: inconclusive, or judged on measurable noise",
    )
    run_to_run_noise: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description=(
            "assumed relative run-to-run spread of a single-run value, used when the sides hold too few "
            "repeats to measure it: a regression must clear it too (0 disables)"
        ),
    )
    rules: dict[str, Rule] = Field(default_factory=dict)

    @field_validator("run_to_run_noise", mode="before")
    @classmethod
    def _noise_pct(cls, v: Any) -> Any:
        return _fraction(v)

    @field_validator("rules")
    @classmethod
    def _known_metrics(cls, rules: dict[str, Rule]) -> dict[str, Rule]:
        known = set(metric_names())
        bad = sorted(set(rules) - known)
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; known: {', '.join(metric_names())}")
        cap = rules.get("capacity_req_s")
        if cap is not None and (cap.max_increase is not None or cap.max is not None):
            raise ValueError("capacity_req_s takes max_decrease and/or min (a capacity is better higher)")
        return rules

    @model_validator(mode="after")
    def _version(self) -> Policy:
        if self.version != POLICY_VERSION:
            raise ValueError(f"policy version {self.version} is not supported (expected {POLICY_VERSION})")
        return self


def _format(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid gate policy"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"  {path or '<top>'}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy must be a YAML mapping, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(_format(source, err)) from None


def load_policy(path: Path | None = None) -> Policy:
    """Load a policy file, or the shipped default when ``path`` is None."""
    if path is None:
        text = resources.files("harness.gate").joinpath("default_policy.yaml").read_text(encoding="utf-8")
        return parse_policy(yaml.safe_load(text), "default_policy.yaml")
    path = Path(path)
    try:
        data = read_yaml(path, PolicyError, "policy file")
    except UnicodeDecodeError as err:
        raise PolicyError(
            f"{path}: policy file is not UTF-8 text (binary or corrupted?): {err.reason}"
        ) from None
    except RecursionError:
        raise PolicyError(f"{path}: policy file nests too deeply to read") from None
    return parse_policy(data, str(path))
