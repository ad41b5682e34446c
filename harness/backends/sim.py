"""``backend: sim``: start the simulated server for a cell, like any real backend.

Why a subprocess and not an in-process server: the sim must have its own core
and its own event loop so that its timings are not distorted by the load
generator, and the orchestrator's process-group teardown is then exercised on
the same path as for vLLM.

Settings map to ``python -m harness.sim`` flags through an explicit table, so a
typo fails validation before any launch. The write log goes to
``workdir/sim_writes.csv`` so a run can compare measured timings with truth.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

import harness
from harness import __version__
from harness.backends.base import BackendSettings, BackendSpec, BackendStartError, ServerHandle
from harness.backends.process import ManagedProcess, ProcessRegistry, await_ready, free_port
from harness.matrix import Cell
from harness.scenario import Scalar, Server

WRITE_LOG_NAME = "sim_writes.csv"

MODES = ("exact", "engine")
APIS = ("openai", "tgi")
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


def _choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the enumerated settings (profiles read from the sim's package data)."""
    from harness.hardware.profiles import load_gpus, load_models
    from harness.sim.roofline import KV_CACHE_DTYPES, QUANTIZATIONS

    return {
        "mode": MODES,
        "api": APIS,
        "quantization": QUANTIZATIONS,
        "kv_cache_dtype": KV_CACHE_DTYPES,
        "gpu": tuple(load_gpus()),
        "model_profile": tuple(load_models()),
    }


class SimSettings(BackendSettings):
    """``servers[].settings`` of a sim server; each maps to ``python -m harness.sim --setting-name VALUE``."""

    mode: str | None = None
    api: str | None = None
    ttft_ms: NonNegative | None = None
    itl_ms: NonNegative | None = None
    tokens_per_chunk: Count | None = None
    jitter_ms: NonNegative | None = None
    stall_every: Count | None = None
    stall_ms: NonNegative | None = None
    seed: Count | None = None
    default_max_tokens: Count | None = None
    max_model_len: Count | None = None
    backlog: Count | None = None
    fault_rate: NonNegative | None = None
    fault_schedule: str | None = None
    fault: str | None = None  # one kind, or several separated by commas
    # Engine-mode settings (``mode: engine``), flags of ``harness/sim/engine_options.py``.
    gpu: str | None = None
    model_profile: str | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: Positive | None = None
    max_num_batched_tokens: Positive | None = None
    max_batch_total_tokens: Positive | None = None
    max_batch_prefill_tokens: Positive | None = None
    block_size: Positive | None = None
    step_overhead_ms: NonNegative | None = None
    tensor_parallel_size: Positive | None = None
    pipeline_parallel_size: Positive | None = None
    no_chunked_prefill: bool | None = None
    time_scale: Annotated[float, Field(gt=0)] | None = None
    grpc_port: Count | None = None
    # Answer GET /v1/models with 404, as a TGIS or Caikit server does (readiness by protocol).
    no_openai_models: bool | None = None

    @field_validator("mode", "api", "quantization", "kv_cache_dtype", "gpu", "model_profile")
    @classmethod
    def _one_of(cls, value: str | None, info: ValidationInfo) -> str | None:
        choices = _choices()[str(info.field_name)]
        if value is not None and value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1], got {value!r}")
        return value


ENGINE_SETTINGS = (
    "gpu", "model_profile", "quantization", "kv_cache_dtype", "gpu_memory_utilization", "max_num_seqs",
    "max_num_batched_tokens", "max_batch_total_tokens", "max_batch_prefill_tokens", "block_size",
    "step_overhead_ms", "tensor_parallel_size", "pipeline_parallel_size", "no_chunked_prefill",
    "time_scale",
)  # fmt: skip


def _engine_errors(server: Server) -> list[str]:
    """Cross-setting rules: engine settings need ``mode: engine``, which needs a GPU and a model profile."""
    from harness.hardware.profiles import load_gpus, load_models, match_model

    def listed(key: str) -> list[Scalar]:
        raw = server.settings.get(key)
        return raw if isinstance(raw, list) else [raw]

    modes = listed("mode")
    errors: list[str] = []
    if "engine" not in modes:
        for key in ENGINE_SETTINGS:
            if key in server.settings:
                errors.append(
                    f"settings.{key}: an engine mode setting; add 'mode: engine' to use it "
                    f"(got {server.settings[key]!r})"
                )
        return errors
    if "gpu" not in server.settings:
        errors.append(f"settings.gpu: required with mode: engine (one of {', '.join(load_gpus())})")
    if "model_profile" not in server.settings and match_model(server.model) is None:
        errors.append(
            f"settings.model_profile: model {server.model!r} matches no profile; set one of "
            f"{', '.join(load_models())}"
        )
    faults = " ".join(str(v) for v in listed("fault") + listed("fault_schedule") if v is not None)
    if "stall" in faults:
        errors.append("settings.fault: 'stall' is exact mode only (an engine's stalls come from its batch)")
    api = listed("api")
    for key in ("max_batch_total_tokens", "max_batch_prefill_tokens"):
        if key in server.settings and "tgi" not in api:
            errors.append(f"settings.{key}: a TGI setting; only with api: tgi")
    return errors


def validate_settings(server: Server, cell_id: str | None = None) -> list[str]:
    """Every problem with a sim server's settings, each naming server, setting and value."""
    return SPEC.validate(server, cell_id)


def sim_flags(settings: dict[str, Scalar]) -> list[str]:
    """Cell settings as sim CLI flags (``fault`` may hold several kinds, comma-separated).

    Engine settings are dropped from a cell whose mode is not ``engine``, so a
    scenario may sweep ``mode: [exact, engine]`` with one set of settings.
    """
    engine = settings.get("mode") == "engine"
    flags: list[str] = []
    for key, value in settings.items():
        if value is None or key not in SimSettings.model_fields or (key in ENGINE_SETTINGS and not engine):
            continue
        flag = "--" + key.replace("_", "-")
        if key == "fault":
            for kind in filter(None, (k.strip() for k in str(value).split(","))):
                flags += [flag, kind]
        elif isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


def check_engine(settings: dict[str, Scalar], served_model: str) -> str | None:
    """Build the cell's engine configuration in-process; the problem (e.g. it does not fit), or None.

    Why before launch: "Llama-3.1-70B does not fit on an A10G" is a fact about the
    settings, and saying so here is clearer than a dead process's log tail.
    """
    from harness.sim.engine_options import engine_config
    from harness.sim.options import build_parser

    try:
        ns = build_parser().parse_args(["--port", "0", "--model", served_model, *sim_flags(settings)])
        engine_config(ns)
    except SystemExit:
        return "the settings do not parse as sim flags"
    except ValueError as err:
        return str(err)
    return None


def engine_band(settings: dict[str, Scalar]) -> str:
    """The validation table's error band for an engine-mode cell's GPU class and regimes."""
    from harness.hardware.calibration import band_label
    from harness.hardware.profiles import get_gpu, resolve_gpu

    key = resolve_gpu(str(settings["gpu"]))
    tp = int(settings.get("tensor_parallel_size") or 1)  # type: ignore[arg-type]
    pp = int(settings.get("pipeline_parallel_size") or 1)  # type: ignore[arg-type]
    return band_label(key, get_gpu(key).calibration_class, tp, pipeline_parallel_size=pp)


class SimBackend:
    """Starts ``python -m harness.sim`` for one cell and stops it (process group)."""

    def __init__(self, home: Path | None = None, registry: ProcessRegistry | None = None) -> None:
        self.home = home
        self.registry = registry
        self.process: ManagedProcess | None = None
        self.grace_s = 5.0

    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        errors = validate_settings(cell.server, cell.cell_id)
        if errors:
            raise BackendStartError("invalid sim settings:\n" + "\n".join(errors))
        server = cell.server
        settings = dict(cell.settings)
        if server.max_model_len is not None:
            settings.setdefault("max_model_len", server.max_model_len)
        mode = str(settings.get("mode") or "exact")
        served = server.served_model_name or server.model
        if mode == "engine":
            from harness.hardware.profiles import match_model

            settings.setdefault("model_profile", match_model(server.model))
            problem = check_engine(settings, served)
            if problem:
                raise BackendStartError(f"cell '{cell.cell_id}': sim engine settings: {problem}")
            band = engine_band(settings)
        else:
            band = "SIMULATED, exact mode: scripted timings, not a hardware model (uncalibrated)"
        port = free_port()
        # gRPC (TGIS and Caikit) is always served (it costs the sim well under 0.1 s to start), so
        # any cell can be driven with ``api: tgis``/``caikit-grpc``; a ``grpc_port`` (not 0) pins the port.
        grpc_flags: list[str] = []
        if not settings.get("grpc_port"):
            settings.pop("grpc_port", None)
            grpc_port = free_port()
            grpc_flags = ["--grpc-port", str(grpc_port)]
        else:
            grpc_port = int(settings["grpc_port"])  # type: ignore[arg-type]
        workdir.mkdir(parents=True, exist_ok=True)
        write_log = workdir / WRITE_LOG_NAME
        python = str(Path(server.python).expanduser()) if server.python else sys.executable
        command = [
            python,
            "-m",
            "harness.sim",
            "--port",
            str(port),
            "--model",
            served,
            "--write-log",
            str(write_log),
            *sim_flags(settings),
            *grpc_flags,
            *server.args,
        ]
        package_root = str(Path(harness.__file__).resolve().parent.parent)
        env = {**os.environ, **server.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        log_path = workdir / "server.log"
        base_url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        self.process = ManagedProcess(
            command, log_path=log_path, env=env, cwd=workdir, registry=self.registry
        )
        await_ready(
            "sim", cell.cell_id, [f"{base_url}/health"], server.startup_timeout_s, self.process, self.stop,
            interval_s=0.05,
        )  # fmt: skip
        return ServerHandle(
            base_url=base_url,
            served_model=served,
            command=command,
            env=dict(server.env),
            version=f"{__version__}+sim.{mode}",
            launch_s=time.monotonic() - started,
            log_path=log_path,
            pid=self.process.pid,
            metrics_url=f"{base_url}/metrics",
            headers={},
            simulated=True,
            simulated_band=band,
            grpc_target=f"127.0.0.1:{grpc_port}",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate(self.grace_s)

    @property
    def write_log_path(self) -> Path | None:
        """Where the running sim writes its ground truth."""
        if self.process is None:
            return None
        return self.process.log_path.parent / WRITE_LOG_NAME


class SimSpec(BackendSpec):
    """``backend: sim``: the built-in simulator, labelled as simulated wherever its numbers appear."""

    name = "sim"
    label = "sim"
    Settings = SimSettings
    protocols = ("completions", "chat", "tgi", "tgis", "caikit-grpc", "caikit-http")
    simulated = True

    def check(self, server: Server) -> list[str]:
        return _engine_errors(server)

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> SimBackend:
        return SimBackend(home=home, registry=registry)


SPEC = SimSpec()
