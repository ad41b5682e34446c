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

import harness
from harness import __version__
from harness.backends.base import BackendStartError, ServerHandle
from harness.backends.process import ManagedProcess, ProcessRegistry, await_ready, free_port
from harness.matrix import Cell
from harness.scenario import Scalar, Server

WRITE_LOG_NAME = "sim_writes.csv"

# setting -> accepted types. Every one maps to --setting-name VALUE.
SIM_SETTINGS: dict[str, tuple[type, ...]] = {
    "mode": (str,),
    "api": (str,),
    "ttft_ms": (int, float),
    "itl_ms": (int, float),
    "tokens_per_chunk": (int,),
    "jitter_ms": (int, float),
    "stall_every": (int,),
    "stall_ms": (int, float),
    "seed": (int,),
    "default_max_tokens": (int,),
    "max_model_len": (int,),
    "backlog": (int,),
    "fault_rate": (int, float),
    "fault_schedule": (str,),
    "fault": (str,),  # one kind, or several separated by commas
}
# Engine-mode settings (``mode: engine``), flags of ``harness/sim/engine_options.py``.
ENGINE_SETTINGS: dict[str, tuple[type, ...]] = {
    "gpu": (str,),
    "model_profile": (str,),
    "quantization": (str,),
    "kv_cache_dtype": (str,),
    "gpu_memory_utilization": (int, float),
    "max_num_seqs": (int,),
    "max_num_batched_tokens": (int,),
    "max_batch_total_tokens": (int,),
    "max_batch_prefill_tokens": (int,),
    "block_size": (int,),
    "step_overhead_ms": (int, float),
    "time_scale": (int, float),
}
SIM_SETTINGS.update(ENGINE_SETTINGS)
SIM_SETTINGS["grpc_port"] = (int,)
POSITIVE = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_batch_total_tokens",
    "max_batch_prefill_tokens",
    "block_size",
)
MODES = ("exact", "engine")
APIS = ("openai", "tgi")


def _choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the enumerated settings (profiles read from the sim's package data)."""
    from harness.sim.hardware import load_gpus, load_models
    from harness.sim.roofline import KV_CACHE_DTYPES, QUANTIZATIONS

    return {
        "mode": MODES,
        "api": APIS,
        "quantization": QUANTIZATIONS,
        "kv_cache_dtype": KV_CACHE_DTYPES,
        "gpu": tuple(load_gpus()),
        "model_profile": tuple(load_models()),
    }


def _value_errors(key: str, value: object, choices: dict[str, tuple[str, ...]]) -> list[str]:
    types = SIM_SETTINGS[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        return [f"settings.{key}: expected {names}, got {value!r}"]
    if key in choices and value not in choices[key]:
        return [f"settings.{key}: {value!r} is not one of {', '.join(choices[key])}"]
    if isinstance(value, int | float):
        if key == "gpu_memory_utilization" and not 0 < value <= 1:
            return [f"settings.{key}: must be in (0, 1], got {value!r}"]
        if key == "time_scale" and value <= 0:
            return [f"settings.{key}: must be > 0, got {value!r}"]
        if key in POSITIVE and value < 1:
            return [f"settings.{key}: must be >= 1, got {value!r}"]
        if value < 0:
            return [f"settings.{key}: must be >= 0, got {value!r}"]
    return []


def _engine_errors(server: Server) -> list[str]:
    """Cross-setting rules: engine settings need ``mode: engine``, which needs a GPU and a model profile."""
    from harness.sim.hardware import load_gpus, load_models, match_model

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
    where = f"server '{server.name}'" + (f" (cell '{cell_id}')" if cell_id else "")
    errors: list[str] = []
    choices = _choices()
    for key, raw in server.settings.items():
        values = raw if isinstance(raw, list) else [raw]
        if key not in SIM_SETTINGS:
            known = ", ".join(sorted(SIM_SETTINGS))
            errors.append(f"{where}: settings.{key}: unknown sim setting (known: {known})")
            continue
        for value in values:
            errors += [f"{where}: {e}" for e in _value_errors(key, value, choices)]
    errors += [f"{where}: {e}" for e in _engine_errors(server)]
    return errors


def sim_flags(settings: dict[str, Scalar]) -> list[str]:
    """Cell settings as sim CLI flags (``fault`` may hold several kinds, comma-separated).

    Engine settings are dropped from a cell whose mode is not ``engine``, so a
    scenario may sweep ``mode: [exact, engine]`` with one set of settings.
    """
    engine = settings.get("mode") == "engine"
    flags: list[str] = []
    for key, value in settings.items():
        if value is None or key not in SIM_SETTINGS or (key in ENGINE_SETTINGS and not engine):
            continue
        flag = "--" + key.replace("_", "-")
        if key == "fault":
            for kind in filter(None, (k.strip() for k in str(value).split(","))):
                flags += [flag, kind]
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


class SimBackend:
    """Starts ``python -m harness.sim`` for one cell and stops it (process group)."""

    def __init__(self, repo_root: Path | None = None, registry: ProcessRegistry | None = None) -> None:
        self.repo_root = repo_root
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
            from harness.sim.hardware import match_model

            settings.setdefault("model_profile", match_model(server.model))
            problem = check_engine(settings, served)
            if problem:
                raise BackendStartError(f"cell '{cell.cell_id}': sim engine settings: {problem}")
        port = free_port()
        # TGIS gRPC is always served (it costs the sim well under 0.1 s to start), so any
        # cell can be driven with ``api: tgis``; a ``grpc_port`` setting (not 0) pins the port.
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
