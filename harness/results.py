"""Result models: what a run writes to ``summary.json`` and what reports and gates read.

Why pydantic: these files outlive the code that wrote them (committed
baselines, CI artefacts), so they carry a schema version and are validated on
read. Every number here is derived from ``records.parquet`` and
``timeseries.parquet``; the summary is a cache, never the source of truth.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dist(_Model):
    """Summary statistics of one latency metric, in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    min: float


class HarnessHealth(_Model):
    """The load generator judging itself: was the client the bottleneck?"""

    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None
    client_cpu_pct: float | None = None
    coalesced_chunk_fraction: float | None = None
    unsent: int = 0  # scheduled arrivals never sent (every user busy until the step ended)
    # Connections (harness/load/prewarm.py, harness/connects.py); None in runs from before they were recorded.
    connections: Literal["prewarm", "cold"] | None = None  # the step's workload.connections
    prewarm_s: float | None = None  # first user's prewarm start to the barrier opening (slowest process)
    prewarm_failures: int = 0  # users whose connection could not be opened and verified before the clock
    connects: int | None = None  # measured requests that opened a connection (not a kept one)
    connect_p50_ms: float | None = None  # connect time of those requests (HTTP; gRPC connects in-call)
    connect_p99_ms: float | None = None
    connect_max_ms: float | None = None
    # Closed loop: mean requests open between the first and last measured send, over the users (heldload).
    held_fraction: float | None = None
    limited: bool = False
    reasons: list[str] = Field(default_factory=list)


class ServerBucket(_Model):
    """A percentile known to its histogram bucket: ``lower_ms < value <= upper_ms`` (None: +Inf)."""

    lower_ms: float
    upper_ms: float | None = None


class ServerClockRole(_Model):
    """One server histogram over a step (end - start scrape) beside the client's same quantity."""

    metric: str
    count: int
    p50: ServerBucket | None = None
    p90: ServerBucket | None = None
    p99: ServerBucket | None = None
    client_count: int | None = None
    client_p50_ms: float | None = None
    client_p90_ms: float | None = None
    client_p99_ms: float | None = None


class ServerClock(_Model):
    """The server's own clock against the client's (harness/telemetry/server_clock.py).

    ``flagged``: the client's p50 of ``checked`` (ttft, else e2e) is above the server's p50 bucket
    by more than ``network_ms``; ``excess_ms`` is client p50 minus that bucket's upper bound.
    """

    roles: dict[str, ServerClockRole] = Field(default_factory=dict)
    network_ms: float
    checked: str | None = None
    excess_ms: float | None = None
    flagged: bool = False
    reason: str | None = None
    notes: list[str] = Field(default_factory=list)


class StepMetrics(_Model):
    step_id: str
    kind: Literal["concurrency", "rate"]
    target: float
    duration_s: float
    requests_total: int
    requests_ok: int
    requests_warmup: int
    ttft_ms: Dist | None = None
    itl_ms: Dist | None = None
    tpot_ms: Dist | None = None
    e2e_ms: Dist | None = None
    queue_ms: Dist | None = None
    request_throughput: float = 0.0
    output_tok_s: float = 0.0
    total_tok_s: float = 0.0
    goodput_req_s: float | None = None
    slo_attainment: float | None = None
    error_rate: float = 0.0
    errors: dict[str, int] = Field(default_factory=dict)
    # 429/503 responses that carried Retry-After: counted, never honoured (tokenbench does not retry).
    retry_after_responses: int = 0
    token_agreement: float | None = None
    token_sources: dict[str, int] = Field(default_factory=dict)
    chunks_per_token: float | None = None
    achieved_rate: float | None = None
    arrival_cv: float | None = None
    mean_in_flight: float | None = None
    harness: HarnessHealth = Field(default_factory=HarnessHealth)
    # The step asked for more concurrent streams than the server serves at once (CellResult.concurrency_cap).
    exceeds_concurrency_cap: bool = False
    # Mean output tokens per successful measured request: what the server produced, and what was
    # asked for (servers without ignore_eos, such as TGI, may stop earlier; harness/lengths.py).
    output_tokens_mean: float | None = None
    requested_output_tokens_mean: float | None = None
    # The server's histograms over the step beside the client's values; None: no histograms to read.
    server_clock: ServerClock | None = None


RemoteGpuStatus = Literal["ok", "auth_failed", "no_series", "unreachable", "error", "no_token", "no_selector"]


class RemoteGpu(_Model):
    """The server pod's GPUs as the cluster's Prometheus saw them (DCGM exporter), and how they were asked.

    ``t_ns`` (the records' monotonic clock) = Prometheus timestamp in wall-clock
    ns - ``wall_minus_monotonic_ns``, read on this host when the cell's
    telemetry started (``clock_uncertainty_ns``: half the time that read took).
    """

    url: str  # the Prometheus base URL, any user:password@ cut out
    selector: str  # the PromQL label matchers, e.g. {namespace="llm",pod=~"granite-.*"}
    status: RemoteGpuStatus
    message: str | None = None
    series: int = 0  # distinct GPUs matched
    samples: int = 0
    queries: int = 0
    step_s: float = 1.0
    wall_minus_monotonic_ns: int | None = None
    clock_uncertainty_ns: int | None = None


class Capacity(_Model):
    """A cell's SLO capacity search (``workload.steps.search``, harness/search.py).

    ``req_s`` is the highest probed rate whose SLO attainment met ``target`` (None: none did);
    ``upper_req_s`` the lowest that did not; ``tok_s`` the output tokens/s measured at ``req_s``.
    """

    req_s: float | None = None
    tok_s: float | None = None
    upper_req_s: float | None = None
    slo: dict[str, float] = Field(default_factory=dict)
    target: float
    precision: float
    probes: list[str] = Field(default_factory=list)
    stop: Literal[
        "converged",
        "max_steps",
        "above_max_rate",
        "below_min_rate",
        "harness_limited",
        "errors",
        "not_finished",
    ] = "not_finished"
    stop_reason: str


class MemorySummary(_Model):
    peak_rss_mb: float | None = None
    steady_rss_mb: float | None = None
    gpu_present: bool = False
    peak_vram_mb: float | None = None
    steady_vram_mb: float | None = None
    kv_cache_usage_peak: float | None = None
    # A server of several process trees (Caikit runtime + TGIS): peak RSS of each, by role.
    peak_rss_by_role_mb: dict[str, float] = Field(default_factory=dict)
    # False: the server is not on this host (external, kserve), so neither this host's GPUs nor process
    # trees were sampled; reports say "not measured here" rather than show this host's figures.
    measured_here: bool = True
    # Where the VRAM figures come from: NVML on this host, the cluster's DCGM exporter, or the simulator.
    gpu_source: Literal["nvml", "dcgm", "modelled"] | None = None
    peak_gpu_util_pct: float | None = None
    steady_gpu_util_pct: float | None = None
    remote_gpu: RemoteGpu | None = None


class CellResult(_Model):
    cell_id: str
    server: str
    backend: str
    model: str
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    identity: str
    # running: started and not finished, by this harness or (if its owner is gone) a killed one;
    # interrupted: stopped by Ctrl-C/SIGTERM/SIGKILL, not by a fault of its own (resumable).
    status: Literal["ok", "failed", "pending", "running", "interrupted"] = "pending"
    error: str | None = None
    log_tail: list[str] = Field(default_factory=list)
    launch_s: float | None = None
    # The cell whose server launch this cell was measured on (same engine, another protocol).
    server_shared_with: str | None = None
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    version: str | None = None
    simulated: bool = False
    # e.g. "SIMULATED, h100-80gb (hopper-sxm class): ±5 % for decode-bound steps (1 published cases); ..."
    simulated_band: str | None = None
    protocol: str | None = None
    stream_usage: bool | None = None  # whether OpenAI stream_options were sent
    stream_usage_reason: str | None = None
    tls_insecure_skip_verify: bool = False
    steps: list[StepMetrics] = Field(default_factory=list)
    memory: MemorySummary = Field(default_factory=MemorySummary)
    # The server's own concurrency limit and the setting behind it (e.g. 5, RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE).
    concurrency_cap: int | None = None
    concurrency_cap_setting: str | None = None
    # What the server said about itself once ready (TGI's /info: version, model_id, sha, limits).
    server_info: dict[str, str] = Field(default_factory=dict)
    # Achieved mean output length over all measured steps, and why it is flagged when it differs
    # from the other cells' by more than 5 % (harness/lengths.py); set when the run finishes.
    output_tokens_mean: float | None = None
    output_length_flag: str | None = None
    capacity: Capacity | None = None  # the SLO capacity search's result, when the scenario asks one


class ClockAnchor(_Model):
    """How the records' monotonic ``*_ns`` stamps map to UTC: ``unix_ns = ns + wall_minus_monotonic_ns``."""

    monotonic_zero_utc: str = Field(description="UTC time (ISO 8601) at which the monotonic clock read 0")
    wall_minus_monotonic_ns: int = Field(description="time.time_ns() - time.monotonic_ns(), read together")
    uncertainty_ns: int = Field(ge=0, description="half the spread of the bracketing monotonic reads")


class RunSummary(_Model):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    scenario: str
    started_at: str
    finished_at: str | None = None
    complete: bool = False
    interrupted: bool = False
    harness_version: str
    # ``pid:start-time`` of the harness writing this run, so a reader can tell a run that is
    # still going from one whose harness was killed (see ``RunDir.read_summary``).
    owner: str | None = None
    resumes: int = 0
    # The wall-clock anchor of every ``*_ns`` stamp in the run (harness.wallclock); None in older runs.
    clock: ClockAnchor | None = None
    cells: list[CellResult] = Field(default_factory=list)

    @property
    def failed_cells(self) -> list[CellResult]:
        return [c for c in self.cells if c.status != "ok"]

    def mark_killed(self) -> None:
        """The harness died without a word (SIGKILL, OOM): the run was interrupted, not pending.

        Cells it had started become ``interrupted``; cells it never reached stay ``pending``.
        """
        self.interrupted = True
        for cell in self.cells:
            if cell.status == "running":
                cell.status = "interrupted"
                cell.error = cell.error or "the harness was killed during this cell"
