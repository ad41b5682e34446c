"""``backend: tgis``: vLLM 0.12 with ``vllm-tgis-adapter``, one process serving OpenAI HTTP and TGIS gRPC.

Why one process for two protocols: it is how OpenShift AI's vLLM ServingRuntime exposes TGIS
(``fmaas.GenerationService`` on the gRPC port), and it lets a scenario drive the *same engine*
over OpenAI HTTP and over TGIS gRPC, which isolates the protocol's cost from the engine's.

The launch follows ``shared/reference/openshift-ai-stack`` (``python -m vllm_tgis_adapter --model
DIR --served-model-name NAME --host 127.0.0.1 --port HTTP --grpc-port GRPC``); the cell's settings
become the same vLLM flags as for ``backend: vllm`` (``vllm.engine_args``: one setting, one flag,
CPU defaults included). Ready means HTTP ``/health``, then the ``tgis`` protocol's own probes (gRPC
health ``SERVING``, then ``ModelInfo``). The version (vLLM and adapter), the command and the log
are recorded as for vLLM.

``start_tgis`` is also the first half of a ``caikit`` cell (``harness/backends/caikit.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.base import BackendSpec, BackendStartError, ServerHandle
from harness.backends.process import ManagedProcess, ProcessRegistry, ProcessSet, await_ready, free_port, tail
from harness.backends.vllm import engine_args, env_of, recorded_env, resolve_model
from harness.backends.vllm_settings import VllmSettings, choices_context
from harness.envs.base import venv_dir, venv_python
from harness.home import tokenbench_home
from harness.matrix import Cell
from harness.redact import redact_command
from harness.scenario import Server

ENV_NAME = "tgis"
ADAPTER_MODULE = "vllm_tgis_adapter"
# The adapter imports vLLM's platform code before its own arguments are read; on a CPU build
# it must be told the device (the reference's start command sets it too).
CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu"}
GRACE_S = 15.0


def default_python(home: Path) -> Path:
    return venv_python(venv_dir(home, ENV_NAME))


def python_for(server: Server, home: Path) -> Path:
    """``servers[].python`` (relative: cwd, then TOKENBENCH_HOME), else the ``tgis`` environment's."""
    if not server.python:
        return default_python(home)
    from harness.envs import resolve_python

    return resolve_python(server.python, home)


def probe_versions(python: Path, dists: tuple[str, ...]) -> dict[str, str | None]:
    """``importlib.metadata.version`` of each distribution in ``python``'s environment (no imports)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = None\n"
        "print(json.dumps(out))"
    )
    try:
        proc = subprocess.run(
            [str(python), "-c", code, *dists], capture_output=True, text=True, timeout=60, check=False
        )
        found = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        found = {}
    return {d: found.get(d) for d in dists}


def tgis_version(python: Path) -> str | None:
    """``vllm 0.12.0+cpu, vllm-tgis-adapter 0.10.0`` for the report; None when vLLM is missing."""
    found = probe_versions(python, ("vllm", "vllm-tgis-adapter"))
    if found["vllm"] is None:
        return None
    return f"vllm {found['vllm']}, vllm-tgis-adapter {found['vllm-tgis-adapter']}"


def build_tgis_command(
    cell: Cell, *, python: Path, http_port: int, grpc_port: int, home: Path, cpu: bool
) -> tuple[list[str], dict[str, str]]:
    """The adapter's command line and env overrides for one cell (the reference's start command)."""
    server = cell.server
    command = [
        str(python), "-m", ADAPTER_MODULE, "--model", resolve_model(server.model, home),
        "--served-model-name", server.served_model_name or server.model,
        "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    flags, env = engine_args(cell, cpu=cpu)
    if cpu:
        env = {**CPU_ENV, **env}
    return command + flags, env


@dataclass
class TgisLaunch:
    """One running, ready TGIS server: where it listens and how it was started."""

    base_url: str
    grpc_target: str
    command: list[str]
    env: dict[str, str]
    version: str | None
    ready_s: float
    process: ManagedProcess


def still_alive(proc: ManagedProcess, what: str) -> Callable[[], None]:
    """A readiness callback that fails fast, with the log tail, once ``proc`` has exited."""

    def check() -> None:
        code = proc.poll()
        if code is not None:
            raise BackendStartError(
                f"{what} exited with code {code} before it was ready", tail(proc.log_path)
            )

    return check


def wait_protocol_ready(
    protocol: str,
    base_url: str,
    grpc_target: str | None,
    model: str,
    timeout_s: float,
    proc: ManagedProcess,
    what: str,
) -> float:
    """Wait for a launched server by one protocol's own readiness probes; BackendStartError if not."""
    from harness.protocols.base import Endpoint, ProtocolError
    from harness.protocols.readiness import wait_until_ready
    from harness.protocols.registry import get_protocol

    endpoint = Endpoint(base_url=base_url, model=model, grpc_target=grpc_target)
    try:
        return wait_until_ready(
            get_protocol(protocol), endpoint, max(timeout_s, 1.0), still_alive=still_alive(proc, what)
        )
    except ProtocolError as err:
        raise BackendStartError(f"{what}: {err}", tail(proc.log_path)) from None


def start_tgis(
    cell: Cell, workdir: Path, procs: ProcessSet, *, python: Path, home: Path, role: str = "server"
) -> TgisLaunch:
    """Start the adapter under ``procs`` (as ``role``) and wait until HTTP and gRPC are both ready.

    On any failure the caller's ``procs.terminate`` is what stops it (``await_ready`` is given it),
    so a Caikit cell never keeps a TGIS server whose runtime failed, nor the reverse.
    """
    if not python.exists():
        raise BackendStartError(
            f"cell '{cell.cell_id}': TGIS interpreter {python} does not exist; run `tokenbench setup "
            f"{ENV_NAME}` or set servers[].python"
        )
    version = tgis_version(python)
    cpu = version is not None and "+cpu" in version
    http_port, grpc_port = free_port(), free_port()
    command, overrides = build_tgis_command(
        cell, python=python, http_port=http_port, grpc_port=grpc_port, home=home, cpu=cpu
    )
    env = {**os.environ, **overrides}
    workdir.mkdir(parents=True, exist_ok=True)
    base_url, grpc_target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    started = time.monotonic()
    proc = procs.start(role, command, log_path=workdir / "server.log", env=env, cwd=workdir)
    timeout = cell.server.startup_timeout_s
    stop = procs.terminate
    await_ready("TGIS (vLLM + vllm-tgis-adapter)", cell.cell_id, [f"{base_url}/health"], timeout, proc, stop)
    model = cell.server.served_model_name or cell.server.model
    left = timeout - (time.monotonic() - started)
    try:
        wait_protocol_ready("tgis", base_url, grpc_target, model, left, proc, "TGIS gRPC")
    except BaseException as err:
        stop()
        if isinstance(err, BackendStartError):
            raise BackendStartError(f"cell '{cell.cell_id}': {err.message}", err.log_tail) from None
        raise
    return TgisLaunch(
        base_url=base_url,
        grpc_target=grpc_target,
        command=redact_command(command),
        env=recorded_env(env),
        version=version,
        ready_s=time.monotonic() - started,
        process=proc,
    )


class TgisBackend:
    """One TGIS server for one cell. ``start`` then ``stop``; ``stop`` is idempotent."""

    def __init__(self, *, home: Path, registry: ProcessRegistry | None = None) -> None:
        self.home = home
        self.procs = ProcessSet(registry)

    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        errors = SPEC.validate_cell(cell)
        if errors:
            raise BackendStartError("invalid TGIS settings:\n" + "\n".join(errors))
        python = python_for(cell.server, self.home)
        launch = start_tgis(cell, workdir, self.procs, python=python, home=self.home)
        return ServerHandle(
            base_url=launch.base_url,
            served_model=cell.server.served_model_name or cell.server.model,
            command=launch.command,
            env=launch.env,
            version=launch.version,
            launch_s=launch.ready_s,
            log_path=launch.process.log_path,
            pid=launch.process.pid,
            metrics_url=f"{launch.base_url}/metrics",
            headers={},
            grpc_target=launch.grpc_target,
        )

    def stop(self) -> None:
        self.procs.terminate(GRACE_S)


class TgisSpec(BackendSpec):
    """``backend: tgis``: OpenAI HTTP and TGIS gRPC from one vLLM 0.12 + adapter process."""

    name = "tgis"
    label = "TGIS"
    Settings = VllmSettings
    protocols = ("completions", "chat", "tgis")

    def environments(self, server: Server, home: Path) -> list[str]:
        """The ``tgis`` environment, unless ``python`` names an interpreter of your own."""
        env = env_of(python_for(server, home), home)
        return [env] if env else []

    def validation_context(self, server: Server) -> dict[str, Any]:
        """The choices recorded from the environment's own vLLM 0.12, else the kept fallback."""
        return choices_context(python_for(server, tokenbench_home()).parent.parent)

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> TgisBackend:
        return TgisBackend(home=home, registry=registry)


SPEC = TgisSpec()
