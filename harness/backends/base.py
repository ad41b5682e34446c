"""The contract between the orchestrator and every server backend.

Why a spec object per backend: the scenario check, the setup step, the
orchestrator and the report each need a different face of the same backend
(which settings it takes and which values are legal, which protocols it
serves, which environment it runs from, how to start it, what caps its
concurrency). Gathering them in one ``BackendSpec`` subclass per module means
adding a backend is one module plus one registration line in
``harness/backends/registry.py``, and nothing outside that module branches on
a backend's name.

``ServerHandle`` is what a started server looks like to everyone else: where
it listens, which model name to ask for, which process trees to measure, how
it was launched. It stays a plain dataclass, free of launch code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from harness.backends.settings import format_settings_errors, settings_value_errors

if TYPE_CHECKING:
    from harness.backends.process import ProcessRegistry
    from harness.matrix import Cell
    from harness.scenario import Scalar, Server

Progress = Callable[[str], None]
# The role of a single-process server's tree in ``ServerHandle.processes`` and in telemetry.
MAIN_ROLE = "server"


@dataclass
class ServerHandle:
    """What a started server looks like to the rest of the harness.

    ``headers`` carries auth for requests. It is excluded from ``repr`` and must
    never be persisted or logged; use :meth:`public_dict` to serialise a handle.

    ``pid`` is the main process; ``processes`` names every process tree the
    server consists of (``{"tgis": 123, "caikit": 456}`` for a two-process
    Caikit cell). A single-process backend sets only ``pid``; :meth:`trees`
    gives both cases one shape.
    """

    base_url: str
    served_model: str
    command: list[str]
    env: dict[str, str]
    version: str | None
    launch_s: float | None
    log_path: Path | None
    pid: int | None
    metrics_url: str | None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    simulated: bool = False
    # What the simulated figures are worth: the error band the what-if validation table supports
    # for this configuration's regimes, or "uncalibrated" (harness/hardware/calibration.py).
    simulated_band: str | None = None
    # ``host:port`` of a gRPC endpoint next to the HTTP one, when the server has one.
    grpc_target: str | None = None
    processes: dict[str, int] = field(default_factory=dict)
    # Where a server that runs in a cluster (kserve) lives: its pod and namespace, for its events,
    # logs and the cluster's Prometheus. None for servers on this host or behind a bare URL.
    pod: str | None = None
    namespace: str | None = None
    # What the server says about itself once ready (TGI's ``/info``: version, model_id, sha,
    # limits), recorded with the cell; {} where a server reports nothing of the kind.
    server_info: dict[str, str] = field(default_factory=dict)

    def trees(self) -> dict[str, int]:
        """Every process tree to measure, by role: ``processes``, else ``{"server": pid}``, else {}."""
        if self.processes:
            return dict(self.processes)
        return {MAIN_ROLE: self.pid} if self.pid is not None else {}

    def public_dict(self) -> dict[str, object]:
        """Everything safe to write into summary.json (no headers)."""
        return {
            "base_url": self.base_url,
            "served_model": self.served_model,
            "command": list(self.command),
            "env": dict(self.env),
            "version": self.version,
            "launch_s": self.launch_s,
            "log_path": str(self.log_path) if self.log_path else None,
            "pid": self.pid,
            "processes": self.trees(),
            "metrics_url": self.metrics_url,
            "simulated": self.simulated,
            "grpc_target": self.grpc_target,
            "pod": self.pod,
            "namespace": self.namespace,
            "server_info": dict(self.server_info),
        }


class BackendStartError(RuntimeError):
    """A server did not come up. ``log_tail`` holds the last lines of its log for the report.

    ``str(err)`` is the one-paragraph message only, so callers that store the
    tail separately do not get it twice; :meth:`details` joins both for a terminal.
    """

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail: list[str] = list(log_tail or [])

    def details(self) -> str:
        if not self.log_tail:
            return self.message
        return self.message + "\n--- last server log lines ---\n" + "\n".join(self.log_tail)


class Backend(Protocol):
    """A way to bring one cell's server up and down.

    ``start`` writes the server log(s) under ``workdir``; ``stop`` is
    idempotent, safe to call after a failed ``start``, and stops every process
    the server consists of.
    """

    def start(self, cell: Cell, workdir: Path) -> ServerHandle: ...

    def stop(self) -> None: ...


class BackendSettings(BaseModel):
    """Base of every backend's ``Settings``: unknown keys and wrong types are errors, not coercions.

    Subclasses declare each setting as an optional field (``None`` omits it)
    with its value rules (``Field(gt=0)``, validators raising ``ValueError``
    with a short message such as ``"'x' is not one of a, b"``). Validators that
    need facts only known at run time (the installed vLLM's choices) read them
    from the validation context that :meth:`BackendSpec.validation_context`
    supplies.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class ConcurrencyCap(NamedTuple):
    """A server's own limit on concurrent streams, and the setting that sets it."""

    limit: int
    setting: str


class KvFitInputs(NamedTuple):
    """What the pre-flight KV-fit estimate (``harness/kvfit.py``) needs from one cell's settings.

    In the engine model's terms (``harness.hardware.memory``): ``quantization`` is the weight
    format (none, fp8, awq, gptq), ``kv_cache_dtype`` auto or fp8, ``memory_fraction`` the share
    of the GPU the server keeps for weights, runtime and KV cache. ``max_seqs`` is the most
    sequences the server batches (None: the cell does not set it, so there is nothing to check),
    named by ``seqs_setting``; ``kv_token_cap`` a setting that caps the KV cache further.
    """

    max_seqs: int | None
    seqs_setting: str
    quantization: str
    kv_cache_dtype: str
    memory_fraction: float
    batched_tokens: int
    kv_token_cap: int | None = None
    cap_setting: str | None = None


def _where(server: Server, cell_id: str | None) -> str:
    return f"server '{server.name}'" + (f" (cell '{cell_id}')" if cell_id else "")


class BackendSpec:
    """Everything the harness knows about one backend. Subclass, set the class attributes, register.

    Class attributes:

    * ``name``: the ``servers[].backend`` value;
    * ``label``: how messages name it ("vLLM");
    * ``Settings``: the pydantic model of ``servers[].settings``;
    * ``protocols``: the protocol names (``harness.protocols``) it serves;
    * ``simulated``: True only for the simulator (the report labels its numbers);
    * ``endpoint``: True for a backend that points at a running server (``base_url``,
      ``api_key_env``) instead of starting one;
    * ``launches_locally``: True when the server runs on this host as processes the harness
      started, so this host's NVML and process trees describe it. False for ``external`` and
      cluster backends: this host's GPUs are not the server's.
    * ``server_histograms``: role (``ttft``, ``itl``, ``e2e``, ``queue``) -> the name of the
      Prometheus histogram (in seconds) the server exports for it, for the server-clock
      self-check (``harness/telemetry/server_clock.py``); empty: the server has none.
    * ``Deploy``: the pydantic model of ``servers[].deploy`` (where and how a backend deploys
      its server: a cluster's namespace, a runtime manifest), or None when the backend takes
      no such block.

    Methods a backend overrides as needed: :meth:`create` (always),
    :meth:`environments`, :meth:`check`, :meth:`validation_context`,
    :meth:`concurrency_cap`, :meth:`kv_fit`, :meth:`serves`, and, for a backend whose settings and protocols
    depend on the server (its ``deploy`` block), :meth:`settings_model` and
    :meth:`protocols_for`.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    protocols: ClassVar[tuple[str, ...]] = ()
    simulated: ClassVar[bool] = False
    endpoint: ClassVar[bool] = False
    launches_locally: ClassVar[bool] = True
    Deploy: ClassVar[type[BaseModel] | None] = None
    server_histograms: ClassVar[dict[str, str]] = {}

    # -- what it serves and needs ---------------------------------------------------------------
    def serves(self, api: str) -> bool:
        """Whether a server of this backend can be driven with protocol ``api``."""
        return api in self.protocols

    def protocols_for(self, server: Server) -> tuple[str, ...]:
        """The protocols this particular server serves (``protocols`` unless the server's own
        configuration narrows them, as a cluster runtime does)."""
        return self.protocols

    def serves_server(self, server: Server, api: str) -> bool:
        """Whether ``server`` can be driven with ``api``: :meth:`serves`, narrowed by :meth:`protocols_for`."""
        return self.serves(api) and (not self.protocols or api in self.protocols_for(server))

    def environments(self, server: Server, home: Path) -> list[str]:
        """Names of the environments (``harness.envs``) this server runs from; [] when none."""
        return []

    def prepare(self, server: Server, home: Path, progress: Progress) -> None:
        """Build (idempotently) every environment :meth:`environments` names, before any cell starts."""
        from harness.envs import ensure_env

        for env_name in self.environments(server, home):
            ensure_env(env_name, home, progress)

    def deploy_identity(self, server: Server) -> dict[str, Any]:
        """The part of ``servers[].deploy`` that changes what is measured (a runtime, resources), for
        the cell's identity; not where it runs (a namespace, a kubeconfig). All of it by default."""
        return dict(server.deploy or {})

    # -- validation ----------------------------------------------------------------------------
    def settings_model(self, server: Server) -> type[BackendSettings]:
        """The ``Settings`` model that judges this server's settings (``Settings`` by default)."""
        return self.Settings

    def validation_context(self, server: Server) -> dict[str, Any]:
        """Run-time facts the ``Settings`` validators read (``info.context``); none by default."""
        return {}

    def check(self, server: Server) -> list[str]:
        """Rules across settings or server fields that one value alone cannot break (messages
        without the ``server '...'`` prefix, which :meth:`validate` adds)."""
        return []

    def validate(
        self, server: Server, cell_id: str | None = None, settings: dict[str, Any] | None = None
    ) -> list[str]:
        """Every problem with a server's settings, each naming server (and cell), field and value.

        ``settings`` defaults to the server's own, whose sweep lists are checked
        value by value, so this works on a ``Server`` before cells are expanded.
        Rules of :meth:`check` name the server only.
        """
        where = _where(server, cell_id)
        given = server.settings if settings is None else settings
        model = self.settings_model(server)
        if given and not model.model_fields:
            return [
                f"{where}: backend '{self.name}' cannot apply settings "
                f"({', '.join(sorted(given))}); configure the deployment itself"
            ]
        context = self.validation_context(server)
        errors = settings_value_errors(model, dict(given), self.label, context)
        return [f"{where}: {e}" for e in errors] + [
            f"{_where(server, None)}: {e}" for e in self.check(server)
        ]

    def validate_cell(self, cell: Cell) -> list[str]:
        """The cell's own values, the server's cross-setting rules, then the ``Settings`` model's
        rules on the cell's combination of values."""
        errors = self.validate(cell.server, cell.cell_id, dict(cell.settings))
        if errors:
            return errors
        try:
            self.parse(cell.settings, cell.server)
        except ValueError as err:
            where = _where(cell.server, cell.cell_id)
            return [f"{where}: {e}" for e in format_settings_errors(err, self.settings_model(cell.server))]
        return []

    def parse(self, settings: dict[str, Scalar], server: Server) -> BackendSettings:
        """One cell's settings as the typed model (raises ``pydantic.ValidationError``)."""
        model = self.settings_model(server)
        return model.model_validate(settings, context=self.validation_context(server))

    # -- running -------------------------------------------------------------------------------
    def concurrency_cap(self, settings: dict[str, Scalar]) -> ConcurrencyCap | None:
        """The most concurrent streams a server with these (cell) settings serves at once, if it has
        such a limit (Caikit's gRPC thread pool, default 5); summary and report flag steps above it."""
        return None

    def kv_fit(self, settings: dict[str, Scalar], server: Server) -> KvFitInputs | None:
        """How this cell's settings size its KV cache, for the KV-fit warning; None: no estimate
        (a backend that is not a GPU engine this harness models)."""
        return None

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> Backend:
        """A fresh, not yet started backend object for one cell."""
        raise NotImplementedError(f"backend '{self.name}' has no launcher")
