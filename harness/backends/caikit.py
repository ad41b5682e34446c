"""``backend: caikit``: the Caikit runtime (caikit-nlp) forwarding to a TGIS server, two processes per cell.

Why two processes: that is OpenShift AI's "Caikit+TGIS" runtime. caikit-nlp's own in-process text
generation answers unary calls only (streaming is ``INVALID_ARGUMENT``), so the streaming stack
is Caikit -> TGIS (``shared/reference/openshift-ai-stack``). A cell starts a TGIS server exactly
as ``backend: tgis`` does (``start_tgis``), then the runtime with a runtime config and the model's
``config.yml`` (module ``TextGenerationTGIS``) written into the cell folder and pointed at the TGIS
gRPC port. Both are one ``ProcessSet``: stopped together, and a runtime that fails to start takes
its TGIS server down with it.

Settings: every ``tgis`` (vLLM) setting passes through to the TGIS server, plus
``grpc_server_thread_pool_size`` -> ``RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE`` (default 5, as
caikit-tgis-serving deploys it). In caikit 0.28.3 that variable sets the legacy
``runtime.grpc.server_thread_pool_size``, which wins over ``runtime.server_thread_pool_size``
(100) and is the one pool *both* the gRPC and the HTTP server run requests on; so it caps
concurrent streams on either protocol, and the report flags steps above it.

Ready: the runtime's HTTP ``/health``, then the cell protocol's own probes (``caikit-grpc``: gRPC
health ``SERVING``, ``GetRuntimeInfo``; ``caikit-http``: ``/health``), then ``/info/models``
listing the model as loaded. The runtime binds its ports on all interfaces (caikit has no host
setting); the harness only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import Field

from harness.backends.base import BackendSpec, BackendStartError, ConcurrencyCap, ServerHandle
from harness.backends.process import ProcessRegistry, ProcessSet, await_ready, free_port, tail
from harness.backends.tgis import default_python as default_tgis_python
from harness.backends.tgis import probe_versions, start_tgis, wait_protocol_ready
from harness.backends.vllm import env_of, resolve_model
from harness.backends.vllm_settings import VllmSettings, choices_context
from harness.envs.base import venv_dir, venv_python
from harness.home import tokenbench_home
from harness.matrix import Cell
from harness.redact import REDACTED, is_secret_name, redact_command
from harness.scenario import Server

ENV_NAME = "caikit"
POOL_SETTING = "grpc_server_thread_pool_size"
POOL_ENV = "RUNTIME_GRPC_SERVER_THREAD_POOL_SIZE"
DEFAULT_POOL = 5
# caikit-nlp's module id for TextGenerationTGIS (its config.yml files carry it).
TGIS_MODULE_ID = "f9181353-4ccf-4572-bd1e-f12bcda26792"
TGIS_MODULE_CLASS = "caikit_nlp.modules.text_generation.text_generation_tgis.TextGenerationTGIS"
RECORDED_PREFIXES = ("RUNTIME_", "CONFIG_FILES", "HF_")
GRACE_S = 15.0


class CaikitSettings(VllmSettings):
    """The TGIS server's vLLM settings, plus the runtime's request thread pool (a sweepable cap)."""

    grpc_server_thread_pool_size: int | None = Field(default=None, ge=1)


def python_for(server: Server, home: Path) -> Path:
    """The runtime's interpreter: ``servers[].python`` (relative: cwd, then TOKENBENCH_HOME), else ``caikit``'s."""
    if not server.python:
        return venv_python(venv_dir(home, ENV_NAME))
    from harness.envs import resolve_python

    return resolve_python(server.python, home)


def special_tokens(model_dir: Path) -> tuple[str, str]:
    """The model's BOS and EOS token texts (``special_tokens_map.json``), else Llama's."""
    try:
        data = json.loads((model_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "<s>", "</s>"

    def text(value: Any, default: str) -> str:
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else default

    return text(data.get("bos_token"), "<s>"), text(data.get("eos_token"), "</s>")


def runtime_config(models_dir: Path, *, grpc_port: int, http_port: int, metrics_port: int, tgis: str) -> dict:
    """The runtime's YAML config: caikit-nlp, one local model folder, each model served through TGIS."""
    return {
        "runtime": {
            "library": "caikit_nlp",
            "local_models_dir": str(models_dir),
            "lazy_load_local_models": False,
            # "" disables the model-mesh unix socket (/tmp/mmesh/grpc.sock, shared by every runtime).
            "grpc": {"enabled": True, "port": grpc_port, "unix_socket_path": ""},
            "http": {"enabled": True, "port": http_port},
            "metrics": {"enabled": True, "port": metrics_port},
            "service_generation": {"enable_training": False},
        },
        "model_management": {
            "initializers": {
                "default": {
                    "type": "LOCAL",
                    "config": {
                        "backend_priority": [
                            {
                                "type": "TGIS",
                                "config": {"connection": {"hostname": tgis}, "test_connections": True},
                            }
                        ]
                    },
                }
            }
        },
    }


def model_config(model_name: str, bos: str, eos: str) -> dict:
    """The ``config.yml`` of a model folder that caikit-nlp serves by forwarding to TGIS."""
    return {
        "module_id": TGIS_MODULE_ID,
        "module_class": TGIS_MODULE_CLASS,
        "name": "TextGenerationTGIS",
        "version": "0.1.0",
        "model_name": model_name,
        "bos_token": bos,
        "eos_token": eos,
    }


def write_configs(
    workdir: Path, model: str, *, model_dir: Path, grpc_port: int, http_port: int, metrics_port: int, tgis: str
) -> Path:  # fmt: skip
    """Write ``runtime.yml`` and ``models/<model>/config.yml`` under ``workdir``; returns runtime.yml."""
    models = workdir / "models"
    (models / model).mkdir(parents=True, exist_ok=True)
    bos, eos = special_tokens(model_dir)
    (models / model / "config.yml").write_text(
        yaml.safe_dump(model_config(model, bos, eos)), encoding="utf-8"
    )
    path = workdir / "runtime.yml"
    config = runtime_config(
        models, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, tgis=tgis
    )
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def caikit_version(python: Path) -> str | None:
    found = probe_versions(python, ("caikit", "caikit-nlp", "caikit-tgis-backend"))
    if found["caikit"] is None:
        return None
    return ", ".join(f"{name} {version}" for name, version in found.items())


def _model_loaded(base_url: str, model: str) -> str | None:
    """Why ``/info/models`` does not (yet) list ``model`` as loaded; None when it does."""
    try:
        models = httpx.get(f"{base_url}/info/models", timeout=5).json().get("models", [])
    except (httpx.HTTPError, ValueError, AttributeError) as err:
        return f"GET {base_url}/info/models: {err}"
    if any(m.get("name") == model and m.get("loaded") for m in models):
        return None
    return f"model '{model}' is not loaded (runtime lists {[m.get('name') for m in models]})"


class CaikitBackend:
    """One Caikit+TGIS cell: a TGIS server, then the runtime; ``stop`` ends both (idempotent)."""

    def __init__(
        self, *, home: Path, registry: ProcessRegistry | None = None, tgis_python: Path | None = None
    ) -> None:
        self.home = home
        self.tgis_python = tgis_python or default_tgis_python(home)
        self.procs = ProcessSet(registry)

    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        errors = SPEC.validate_cell(cell)
        if errors:
            raise BackendStartError("invalid Caikit settings:\n" + "\n".join(errors))
        server = cell.server
        python = python_for(server, self.home)
        if not python.exists():
            raise BackendStartError(
                f"cell '{cell.cell_id}': Caikit interpreter {python} does not exist; run `tokenbench "
                f"setup {ENV_NAME}` or set servers[].python"
            )
        started = time.monotonic()
        tgis = start_tgis(
            cell, workdir / "tgis", self.procs, python=self.tgis_python, home=self.home, role="tgis"
        )
        model = server.served_model_name or server.model
        ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
        rundir = (workdir / "caikit").resolve()  # the runtime runs in it: CONFIG_FILES must not be relative
        rundir.mkdir(parents=True, exist_ok=True)
        config = write_configs(
            rundir, model, model_dir=Path(resolve_model(server.model, self.home)), tgis=tgis.grpc_target,
            **ports,
        )  # fmt: skip
        pool = cell.settings.get(POOL_SETTING) or DEFAULT_POOL
        overrides = {"CONFIG_FILES": str(config), "HF_HUB_OFFLINE": "1", POOL_ENV: str(pool)}
        env = {**os.environ, **overrides, **server.env}
        command = [str(python), "-m", "caikit.runtime"]
        proc = self.procs.start("caikit", command, log_path=rundir / "server.log", env=env, cwd=rundir)
        base_url = f"http://127.0.0.1:{ports['http_port']}"
        grpc_target = f"127.0.0.1:{ports['grpc_port']}"
        left = server.startup_timeout_s - (time.monotonic() - started)
        stop = self.procs.terminate
        await_ready("Caikit runtime", cell.cell_id, [f"{base_url}/health"], max(left, 1.0), proc, stop)
        try:
            for protocol in SPEC.protocols:
                left = server.startup_timeout_s - (time.monotonic() - started)
                wait_protocol_ready(protocol, base_url, grpc_target, model, left, proc, "Caikit runtime")
            why = _model_loaded(base_url, model)
            if why is not None:
                raise BackendStartError(f"Caikit runtime: {why}", tail(proc.log_path))
        except BaseException as err:
            stop()
            if isinstance(err, BackendStartError):
                raise BackendStartError(f"cell '{cell.cell_id}': {err.message}", err.log_tail) from None
            raise
        picked = {
            k: (REDACTED if is_secret_name(k) else v)
            for k, v in sorted(env.items())
            if k.startswith(RECORDED_PREFIXES) or k in server.env
        }
        version = caikit_version(python)
        (workdir / "launch.json").write_text(
            json.dumps(
                {
                    "caikit": {"command": command, "env": picked, "version": version, "grpc": grpc_target,
                               "http": base_url, "thread_pool_size": pool},
                    "tgis": {"command": tgis.command, "env": tgis.env, "version": tgis.version,
                             "grpc": tgis.grpc_target, "http": tgis.base_url, "ready_s": tgis.ready_s},
                },
                indent=1,
            ),
            encoding="utf-8",
        )  # fmt: skip
        return ServerHandle(
            base_url=base_url,
            served_model=model,
            command=redact_command(command),
            env={**picked, **{f"tgis:{k}": v for k, v in tgis.env.items()}},
            version=f"{version} -> {tgis.version}",
            launch_s=time.monotonic() - started,
            log_path=proc.log_path,
            pid=proc.pid,
            metrics_url=f"http://127.0.0.1:{ports['metrics_port']}/metrics",
            headers={},
            grpc_target=grpc_target,
            processes=self.procs.pids,
        )

    def stop(self) -> None:
        self.procs.terminate(GRACE_S)


class CaikitSpec(BackendSpec):
    """``backend: caikit``: Caikit gRPC and HTTP, forwarding to a TGIS server started in the same cell."""

    name = "caikit"
    label = "Caikit"
    Settings = CaikitSettings
    protocols = ("caikit-grpc", "caikit-http")

    def environments(self, server: Server, home: Path) -> list[str]:
        """``tgis`` always (the runtime forwards to it) and ``caikit`` unless ``python`` is your own."""
        env = env_of(python_for(server, home), home)
        return ["tgis", *([env] if env else [])]

    def validation_context(self, server: Server) -> dict[str, Any]:
        """vLLM choices of the TGIS environment (its vLLM 0.12 runs the engine), else the fallback."""
        return choices_context(default_tgis_python(tokenbench_home()).parent.parent)

    def concurrency_cap(self, settings: dict[str, Any]) -> ConcurrencyCap:
        return ConcurrencyCap(int(settings.get(POOL_SETTING) or DEFAULT_POOL), POOL_SETTING)

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> CaikitBackend:
        return CaikitBackend(home=home, registry=registry)


SPEC = CaikitSpec()
