"""The load plan: everything one Locust run needs to drive one step, as a JSON file.

Why a file and not argv: Locust parses its own command line, and the plan has
structured fields (paths, stop rule, seed). The harness writes the plan, passes
its path in ``TOKENBENCH_LOAD_PLAN``, and every Locust process (master and
forked workers) reads the same file. Auth headers are deliberately *not* a
field: they travel only in the ``TOKENBENCH_LOAD_HEADERS`` environment variable
so that they never land in a file, an argv, or a log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.atomic import write_json
from harness.load.bounds import MAX_RESPONSE_BYTES, MAX_RESPONSE_CHUNKS, Bounds
from harness.protocols.base import ProtocolError, TlsOptions
from harness.protocols.registry import get_protocol

if TYPE_CHECKING:
    from harness.workload import Distributed

PLAN_ENV = "TOKENBENCH_LOAD_PLAN"
HEADERS_ENV = "TOKENBENCH_LOAD_HEADERS"

KINDS = ("concurrency", "rate")
CONNECTIONS = ("prewarm", "cold")
DEFAULT_POOL_CAP = 1024


class PlanError(ValueError):
    """A load plan that cannot run; the message names the file, field and value."""


@dataclass(frozen=True)
class LoadPlan:
    """One step of load: who to hit, how hard, for how long, and where results go.

    ``kind="concurrency"``: ``target`` closed-loop users. ``kind="rate"``: a
    Poisson process of ``target`` requests/s served by a pool of
    ``max_concurrency`` users. Exactly one of ``duration_s`` / ``requests`` is
    the stop rule; both count *after* ``warmup_s``.
    """

    run_id: str
    cell_id: str
    step_id: str
    api: str
    base_url: str
    model: str
    kind: str
    target: float
    prompts_path: str
    records_path: str
    health_path: str
    warmup_s: float = 0.0
    duration_s: float | None = None
    requests: int | None = None
    max_concurrency: int | None = None
    timeout_s: float = 120.0
    processes: int = 1
    seed: int = 0
    ignore_eos: bool = True
    temperature: float = 0.0
    simulated: bool = False
    tokenizer_path: str | None = None
    grpc_target: str | None = None  # ``host:port`` for gRPC protocols; unused by HTTP ones
    grpc_tls: bool = False  # gRPC over TLS (the server has a ``tls`` block)
    tls_ca_bundle: str | None = None
    tls_server_name: str | None = None
    tls_insecure_skip_verify: bool = False
    # Send OpenAI's ``stream_options`` (decided per cell from ``stream_usage: auto|on|off``).
    stream_usage: bool = True
    # What one response may hold before it is cut as ``stream_too_large`` (``workload.max_response_*``).
    max_response_bytes: int = MAX_RESPONSE_BYTES
    max_response_chunks: int = MAX_RESPONSE_CHUNKS
    # Across hosts (``workload.distributed``): external ``tokenbench worker``s the master waits for
    # (0: a single-host step), the master's ``host:port``, and how long it waits for them.
    expect_workers: int = 0
    master_bind: str | None = None
    worker_wait_s: float = 120.0
    # ``prewarm``: every user opens and verifies its connection before the step's clock starts;
    # ``cold``: the first request of every user connects inside the step (harness/load/prewarm.py).
    connections: str = "prewarm"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "<plan>") -> None:
        def bad(field: str, msg: str) -> PlanError:
            return PlanError(f"{source}: {field}: {msg} (got {getattr(self, field)!r})")

        if self.kind not in KINDS:
            raise bad("kind", f"must be one of {KINDS}")
        if not self.target > 0:
            raise bad("target", "must be > 0")
        if self.connections not in CONNECTIONS:
            raise bad("connections", f"must be one of {CONNECTIONS}")
        if self.kind == "concurrency" and self.target != int(self.target):
            raise bad("target", "closed-loop concurrency must be a whole number")
        if (self.duration_s is None) == (self.requests is None):
            raise bad("duration_s", "give exactly one of duration_s or requests")
        if self.duration_s is not None and not self.duration_s > 0:
            raise bad("duration_s", "must be > 0")
        if self.requests is not None and self.requests < 1:
            raise bad("requests", "must be >= 1")
        if self.warmup_s < 0:
            raise bad("warmup_s", "must be >= 0")
        if not self.timeout_s > 0:
            raise bad("timeout_s", "must be > 0")
        if self.processes < 1:
            raise bad("processes", "must be >= 1")
        if self.max_response_bytes < 1:
            raise bad("max_response_bytes", "must be >= 1")
        if self.max_response_chunks < 1:
            raise bad("max_response_chunks", "must be >= 1")
        if self.expect_workers < 0:
            raise bad("expect_workers", "must be >= 0")
        if self.expect_workers and (self.master_bind is None or not _is_host_port(self.master_bind)):
            raise bad("master_bind", "a distributed step needs the master's host:port")
        if not self.worker_wait_s > 0:
            raise bad("worker_wait_s", "must be > 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise bad("max_concurrency", "must be >= 1")
        if not self.base_url.startswith(("http://", "https://")):
            raise bad("base_url", "must start with http:// or https://")
        try:
            spec = get_protocol(self.api)
        except ProtocolError as err:
            raise bad("api", str(err)) from None
        if spec.transport == "grpc" and not self.grpc_target:
            raise bad("grpc_target", f"api '{self.api}' (gRPC) needs the server's gRPC host:port")
        if self.grpc_target is not None and not _is_host_port(self.grpc_target):
            raise bad("grpc_target", "must be host:port")

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.max_response_bytes, self.max_response_chunks)

    @property
    def tls(self) -> TlsOptions:
        return TlsOptions(self.tls_ca_bundle, self.tls_server_name, self.tls_insecure_skip_verify)

    @property
    def users(self) -> int:
        """Locust users to spawn: the closed-loop concurrency, or the open-loop pool size.

        The open-loop default pool is large enough that, by Little's law, it
        only runs dry if requests take close to ``timeout_s``; capped so a high
        rate does not spawn an absurd number of greenlets.
        """
        if self.kind == "concurrency":
            return int(self.target)
        if self.max_concurrency is not None:
            return self.max_concurrency
        return max(1, min(DEFAULT_POOL_CAP, math.ceil(self.target * self.timeout_s)))

    @property
    def local_workers(self) -> int:
        """Distributed: the workers the master's host adds to the external ones (``processes`` when above 1)."""
        return self.processes if self.expect_workers and self.processes > 1 else 0

    @property
    def workers_expected(self) -> int:
        """Distributed: every worker the master waits for before the step starts."""
        return self.expect_workers + self.local_workers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "<plan>") -> LoadPlan:
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a load plan must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PlanError(f"{source}: unknown field(s) {unknown}")
        try:
            plan = cls(**data)
        except TypeError as err:
            raise PlanError(f"{source}: {err}") from None
        except PlanError as err:
            raise PlanError(str(err).replace("<plan>", source, 1)) from None
        return plan

    @classmethod
    def read(cls, path: Path | str) -> LoadPlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlanError(f"{path}: no such load plan file") from None
        except json.JSONDecodeError as err:
            raise PlanError(f"{path}: not valid JSON: {err}") from None
        return cls.from_dict(data, str(path))


def distributed_fields(spec: Distributed | None) -> dict[str, Any]:
    """The plan fields of ``workload.distributed`` (none when unset: a single-host step)."""
    if spec is None:
        return {}
    return {"expect_workers": spec.expect_workers, "master_bind": spec.bind, "worker_wait_s": spec.wait_s}


def _is_host_port(target: str) -> bool:
    host, sep, port = target.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def plan_from_env(environ: dict[str, str] | None = None) -> LoadPlan:
    """The plan named by ``TOKENBENCH_LOAD_PLAN`` (what the locustfile runs)."""
    env = os.environ if environ is None else environ
    path = env.get(PLAN_ENV)
    if not path:
        raise PlanError(f"{PLAN_ENV} is not set: the locustfile must be started by harness.load.runner")
    return LoadPlan.read(path)


def headers_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Extra request headers (auth) from ``TOKENBENCH_LOAD_HEADERS``; never logged."""
    env = os.environ if environ is None else environ
    raw = env.get(HEADERS_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        # Do not echo the value: it holds secrets.
        raise PlanError(f"{HEADERS_ENV} is not a JSON object of strings") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise PlanError(f"{HEADERS_ENV} is not a JSON object of strings")
    return data
