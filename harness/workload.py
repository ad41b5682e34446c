"""The ``workload`` block of a scenario: what load to drive, and when a step stops.

Why apart from ``scenario``: the servers block says what to start; this one
says what to send (prompt and output length distributions or a dataset, the
protocol), the steps (closed-loop concurrencies, open-loop rates, an SLO
search), each step's stop rule and the guards on the load generator (timeouts,
response size limits, processes, distributed workers). The load layer reads
these models (``harness.load.prompts`` draws from ``LengthDist``), and the
cross-field rules that need the servers too (prompt + output within a server's
context) stay with ``Scenario``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from harness.bounds import MAX_PROCESSES, MAX_SECONDS, MAX_TOKENS, FieldProblem, rate_problem
from harness.load.bounds import MAX_RESPONSE_BYTES, MAX_RESPONSE_CHUNKS
from harness.runsecrets import WORKER_TOKEN_ENV
from harness.scenario_fields import Api, Seconds, StrictModel, Tokens
from harness.search import SearchSpec

Connections = Literal["prewarm", "cold"]


class LengthDist(StrictModel):
    """A token-length distribution. All draws are clamped to [min, max] and seeded."""

    dist: Literal["fixed", "uniform", "normal"] = "fixed"
    value: Tokens | None = None
    min: Tokens | None = None
    max: Tokens | None = None
    mean: float | None = Field(default=None, gt=0, le=MAX_TOKENS)
    stddev: float | None = Field(default=None, ge=0, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        if self.dist == "fixed" and self.value is None:
            raise FieldProblem("value", None, "dist 'fixed' needs 'value'")
        if self.dist == "uniform" and (self.min is None or self.max is None):
            raise FieldProblem(
                "min" if self.min is None else "max", None, "dist 'uniform' needs 'min' and 'max'"
            )
        if self.dist == "normal" and (self.mean is None or self.stddev is None):
            raise FieldProblem(
                "mean" if self.mean is None else "stddev", None, "dist 'normal' needs 'mean' and 'stddev'"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldProblem("min", self.min, f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def upper_bound(self) -> int:
        """The longest length this distribution can produce (used for context checks)."""
        if self.dist == "fixed":
            assert self.value is not None
            return self.value
        if self.max is not None:
            return self.max
        assert self.mean is not None and self.stddev is not None
        return int(self.mean + 6 * self.stddev) + 1


def _length(v: Any) -> Any:
    return {"dist": "fixed", "value": v} if isinstance(v, int) and not isinstance(v, bool) else v


LengthSpec = Annotated[LengthDist, Field()]


class LoadSteps(StrictModel):
    """Closed-loop concurrencies and/or open-loop Poisson rates, then an SLO capacity search."""

    concurrency: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    rate: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    search: SearchSpec | None = None  # harness/search.py: bracket + bisect over Poisson rates

    @model_validator(mode="after")
    def _non_empty(self) -> LoadSteps:
        if not self.concurrency and not self.rate and self.search is None:
            raise FieldProblem("", [], "give at least one 'concurrency' or 'rate' step, or a 'search'")
        seen: dict[str, int] = {}
        for key, values in (("concurrency", self.concurrency), ("rate", self.rate)):
            for i, value in enumerate(values):
                step_id = step_id_of(key, value)
                if step_id in seen:  # step ids name folders: two steps may not share one
                    raise FieldProblem(
                        f"{key}[{i}]", value, f"repeats step '{step_id}' ({key}[{seen[step_id]}])"
                    )
                seen[step_id] = i
        return self


def step_id_of(kind: str, target: float) -> str:
    """A step's id, which also names its folder: ``c4`` (concurrency 4), ``r0.5`` (rate 0.5/s)."""
    return f"c{int(target)}" if kind == "concurrency" else f"r{target:g}"


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class Distributed(StrictModel):
    """Load from several hosts: ``tokenbench worker --master HOST:PORT`` on each (docs/distributed.md).

    Why these checks here: a bad address or a missing token would otherwise
    surface minutes later, after the server started. Binding beyond loopback
    exposes Locust's unauthenticated channel, so it needs the shared token.
    """

    expect_workers: int = Field(ge=1, le=MAX_PROCESSES, description="external workers the run waits for")
    bind: str = Field(
        default="127.0.0.1:5557", description="the master's HOST:PORT (beyond loopback: explicit)"
    )
    wait_s: Seconds = Field(default=120.0, description="how long a step waits for its workers")

    @model_validator(mode="after")
    def _address(self) -> Distributed:
        host, sep, port = self.bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FieldProblem("bind", self.bind, "must be HOST:PORT with a port in 1..65535")
        if host not in LOOPBACK_HOSTS and not os.environ.get(WORKER_TOKEN_ENV):
            raise FieldProblem(
                "bind",
                self.bind,
                f"binding beyond loopback needs the workers' shared token in ${WORKER_TOKEN_ENV} "
                "(Locust's channel is not authenticated otherwise)",
            )
        return self


class Workload(StrictModel):
    api: Api = "completions"
    prompt_tokens: LengthSpec | None = None
    output_tokens: LengthSpec
    ignore_eos: bool = True
    dataset: Path | None = None
    steps: LoadSteps
    warmup_s: float = Field(default=0.0, ge=0, le=MAX_SECONDS)
    duration_s: Seconds | None = None
    requests: int | None = Field(default=None, gt=0, le=1_000_000_000)
    max_concurrency: int | None = Field(
        default=None, gt=0, description="open loop: size of the user pool that serves the schedule"
    )
    timeout_s: Seconds = 120.0
    processes: int = Field(default=1, ge=1, le=MAX_PROCESSES, description="Locust --processes")
    distributed: Distributed | None = None  # load from other hosts too; not in the cell identity
    temperature: float = Field(default=0.0, ge=0)
    abort_error_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="a step whose measured requests fail at this rate or more fails its cell",
    )
    max_response_bytes: int = Field(
        default=MAX_RESPONSE_BYTES,
        gt=0,
        description="a response holding more body bytes is cut and counted as stream_too_large",
    )
    max_response_chunks: int = Field(
        default=MAX_RESPONSE_CHUNKS,
        gt=0,
        description="a response needing more socket reads (gRPC: messages) is cut as stream_too_large",
    )
    connections: Connections = Field(
        default="prewarm",
        description="prewarm: open and verify every user's connection before the step's clock starts "
        "(closed and open loop); cold: each user's first request connects inside the step (the burst)",
    )

    @model_validator(mode="before")
    @classmethod
    def _lengths(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("prompt_tokens", "output_tokens"):
                if key in data:
                    data[key] = _length(data[key])
        return data

    @model_validator(mode="after")
    def _prompt_source(self) -> Workload:
        if self.prompt_tokens is None and self.dataset is None:
            raise FieldProblem(
                "prompt_tokens",
                None,
                "give 'prompt_tokens' (synthetic prompts) or 'dataset' (a JSONL file of prompts)",
            )
        if self.prompt_tokens is not None and self.dataset is not None:
            raise FieldProblem(
                "dataset", str(self.dataset), "give either 'prompt_tokens' or 'dataset', not both"
            )
        return self

    @model_validator(mode="after")
    def _stop_rule(self) -> Workload:
        if (self.duration_s is None) == (self.requests is None):
            given = f"duration_s={self.duration_s}, requests={self.requests}"
            raise FieldProblem("", given, "give exactly one of 'duration_s' or 'requests' per step")
        for i, rate in enumerate(self.steps.rate):  # a hopeless rate would hang or empty its step
            problem = rate_problem(rate, self.duration_s, self.requests)
            if problem:
                raise FieldProblem(f"steps.rate[{i}]", rate, problem)
        return self
