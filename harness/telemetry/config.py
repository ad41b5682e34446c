"""The scenario's ``telemetry:`` block: where to ask for the GPU memory of servers not on this host.

Why a block of its own: this host's NVML describes only servers the harness
launched here. An ``external`` endpoint or a cluster (kserve) server runs on
GPUs this host cannot see; the cluster's Prometheus (or Thanos) holds what the
NVIDIA DCGM exporter measured there. These fields say which Prometheus, which
credential, and which pod's GPUs are the server's.

Why the label names are settings: the DCGM exporter labels each GPU with the
pod using it as ``pod`` / ``namespace``, but a Prometheus that scrapes it
without ``honorLabels`` (OpenShift's user-workload monitoring, many
ServiceMonitors) renames them ``exported_pod`` / ``exported_namespace``.

The token is named by its environment variable, never written in the
scenario, and is only ever sent as an ``Authorization: Bearer`` header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.bounds import FieldProblem, check_http_url, without_userinfo

if TYPE_CHECKING:
    from harness.scenario import Scenario

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A Kubernetes namespace is a DNS-1123 label.
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_POD_REGEX = 1000
DEFAULT_SAMPLES_PER_STEP = 4
DEFAULT_SCRAPE_S = 1.0
MIN_SCRAPE_S = 0.1


class TelemetryConfig(BaseModel):
    """``telemetry:`` in a scenario; every field optional, nothing queried without ``prometheus_url``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prometheus_url: str | None = Field(
        default=None, description="the cluster's Prometheus or Thanos Querier (its /api/v1/query_range)"
    )
    prometheus_token_env: str | None = Field(
        default=None, description="env var holding a Bearer token for it (never written anywhere)"
    )
    pod: str | None = Field(
        default=None,
        description="regex (PromQL, fully anchored) of the server pod's name, for servers that do not "
        "know their pod (external); a kserve cell's own pod takes over",
    )
    namespace: str | None = Field(default=None, description="the server pod's namespace")
    pod_label: str = Field(default="pod", description="DCGM label holding the pod (or exported_pod)")
    namespace_label: str = Field(default="namespace", description="or exported_namespace")
    step_s: float = Field(default=1.0, gt=0, le=60, description="query_range resolution")
    margin_s: float = Field(default=30.0, ge=0, le=3600, description="queried before and after each step")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="per Prometheus request")
    prometheus_samples_per_step: int = Field(
        default=DEFAULT_SAMPLES_PER_STEP,
        ge=1,
        le=100,
        description="scrapes of the server's own /metrics at least this many times per timed step "
        "(the scrape interval shrinks from 1 s for short steps, down to 0.1 s)",
    )

    server_clock_network_ms: float = Field(
        default=1.0,
        ge=0,
        le=10_000,
        description="network time expected between the server's clock and the client's (ms), allowed "
        "before the server-clock self-check flags a step (1 ms: loopback or one LAN hop)",
    )

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        problem = check_http_url(url) if url is not None else None
        if url is not None and not problem and "@" in urlsplit(url).netloc:
            problem = "must not hold credentials (user:password@); give the token in prometheus_token_env"
        if problem:
            raise FieldProblem("", without_userinfo(url or ""), problem)
        return url

    @field_validator("prometheus_token_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME.match(name):
            raise ValueError("must be an environment variable name (letters, digits, '_')")
        return name

    @field_validator("pod")
    @classmethod
    def _pod_regex(cls, pod: str | None) -> str | None:
        if pod is None:
            return None
        if not pod or len(pod) > MAX_POD_REGEX:
            raise ValueError(f"must be a non-empty regex of at most {MAX_POD_REGEX} characters")
        try:
            re.compile(pod)  # Prometheus uses RE2; what Python rejects, RE2 rejects too (nearly always)
        except re.error as err:
            raise ValueError(f"not a valid regex ({err})") from None
        return pod

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, namespace: str | None) -> str | None:
        if namespace is not None and not NAMESPACE.match(namespace):
            raise ValueError("must be a Kubernetes namespace name (lower-case letters, digits, '-')")
        return namespace

    @field_validator("pod_label", "namespace_label")
    @classmethod
    def _label(cls, name: str) -> str:
        if not LABEL_NAME.match(name):
            raise ValueError("must be a Prometheus label name (letters, digits, '_')")
        return name

    @model_validator(mode="after")
    def _needs_url(self) -> TelemetryConfig:
        if self.prometheus_url is None:
            for key in ("prometheus_token_env", "pod", "namespace"):
                value = getattr(self, key)
                if value is not None:
                    raise FieldProblem(key, value, f"'{key}' needs 'prometheus_url' (the Prometheus to ask)")
        return self


def scrape_interval(step_seconds: Iterable[float | None], samples_per_step: int) -> float:
    """Seconds between ``/metrics`` scrapes so the shortest timed step gets ``samples_per_step`` of them.

    Why: a gauge scraped once a second says nothing about a 2 s step beyond
    one or two points, and the report would have to invent the rest. The
    interval is the shortest step over ``samples_per_step + 1`` (the first
    scrape can fall anywhere in the first interval), never longer than 1 s
    and never shorter than 0.1 s (a scrape costs the server a render of all
    its metrics). Steps bounded by a request count, not a duration, have no
    known length and leave the 1 s default.
    """
    known = [s for s in step_seconds if s is not None and s > 0]
    if not known:
        return DEFAULT_SCRAPE_S
    return max(MIN_SCRAPE_S, min(DEFAULT_SCRAPE_S, min(known) / (samples_per_step + 1)))


def telemetry_problems(scenario: Scenario) -> list[str]:
    """Rules across the telemetry block and the servers (one message each, naming the field).

    A server behind a bare URL (an endpoint backend) never learns its pod, so
    with a Prometheus configured it needs ``telemetry.pod`` or
    ``telemetry.namespace``: without either the query would match every GPU
    of the cluster.
    """
    from harness.backends.registry import get_spec

    config = scenario.telemetry
    if config is None or config.prometheus_url is None or (config.pod or config.namespace):
        return []
    bare = [s.name for s in scenario.servers if get_spec(s.backend).endpoint]
    if not bare:
        return []
    from harness.yamlfile import shown

    return [
        f"telemetry.prometheus_url: server(s) {', '.join(repr(n) for n in bare)} do not know their pod; "
        "set telemetry.pod (a regex of the pod's name) and/or telemetry.namespace so the query matches "
        f"the server's GPUs only (got {shown(without_userinfo(config.prometheus_url))})"
    ]
