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
from harness.backends.process import ManagedProcess, ProcessRegistry, free_port, wait_ready
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
# Settings of the engine model (issue 3); known so that they get a precise error until it lands.
ENGINE_SETTINGS = (
    "gpu",
    "profile",
    "max_num_seqs",
    "max_num_batched_tokens",
    "quantization",
    "kv_cache_dtype",
    "gpu_memory_utilization",
    "max_batch_total_tokens",
    "max_batch_prefill_tokens",
)
MODES = ("exact",)
APIS = ("openai", "tgi")


def validate_settings(server: Server, cell_id: str | None = None) -> list[str]:
    """Every problem with a sim server's settings, each naming server, setting and value."""
    where = f"server '{server.name}'" + (f" (cell '{cell_id}')" if cell_id else "")
    errors: list[str] = []
    for key, raw in server.settings.items():
        values = raw if isinstance(raw, list) else [raw]
        if key in ENGINE_SETTINGS:
            errors.append(f"{where}: settings.{key}: engine mode is not available in this sim build yet")
            continue
        if key not in SIM_SETTINGS:
            known = ", ".join(sorted(SIM_SETTINGS))
            errors.append(f"{where}: settings.{key}: unknown sim setting (known: {known})")
            continue
        types = SIM_SETTINGS[key]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, types):
                names = " or ".join(t.__name__ for t in types)
                errors.append(f"{where}: settings.{key}: expected {names}, got {value!r}")
            elif key == "mode" and value not in MODES:
                errors.append(f"{where}: settings.mode: {value!r} is not one of {', '.join(MODES)}")
            elif key == "api" and value not in APIS:
                errors.append(f"{where}: settings.api: {value!r} is not one of {', '.join(APIS)}")
            elif isinstance(value, int | float) and value < 0:
                errors.append(f"{where}: settings.{key}: must be >= 0, got {value!r}")
    return errors


def sim_flags(settings: dict[str, Scalar]) -> list[str]:
    """Cell settings as sim CLI flags (``fault`` may hold several kinds, comma-separated)."""
    flags: list[str] = []
    for key, value in settings.items():
        if value is None or key not in SIM_SETTINGS:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "fault":
            for kind in filter(None, (k.strip() for k in str(value).split(","))):
                flags += [flag, kind]
        else:
            flags += [flag, str(value)]
    return flags


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
        port = free_port()
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
        try:
            wait_ready([f"{base_url}/health"], server.startup_timeout_s, self.process, interval_s=0.05)
        except BaseException as err:
            self.stop()
            if isinstance(err, BackendStartError):
                raise BackendStartError(
                    f"cell '{cell.cell_id}': sim did not start: {err.message}", err.log_tail
                ) from None
            raise
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
