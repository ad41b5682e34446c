"""Launch ``vllm serve`` for one cell from its own Python environment.

Why this shape: vLLM runs from a separate interpreter (see
``harness.envs``) so the harness never imports it; settings are checked by
``VllmSettings`` (``harness/backends/vllm_settings.py``) and mapped to CLI
flags by an explicit table, so that a typo or an impossible value in a
scenario fails at ``validate`` rather than 30 s into a launch, and so that a
sweep axis cannot silently map to nothing.

What is recorded for the report: the exact command, the environment
variables that change vLLM's behaviour (secrets redacted), the version the
backend env reports, and launch-to-healthy seconds.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import BackendSpec, BackendStartError, KvFitInputs, ServerHandle
from harness.backends.process import ManagedProcess, ProcessRegistry, await_ready, free_port, tail
from harness.backends.vllm_settings import VllmSettings, choices_context
from harness.envs.base import venv_dir, venv_python
from harness.home import tokenbench_home
from harness.matrix import Cell
from harness.redact import REDACTED, is_secret_name, redact_command
from harness.scenario import Scalar, Server

# setting name -> kind: "bool" maps to --x / --no-x, "value" to --x VALUE. The order is the flags' order.
FLAG_SETTINGS: dict[str, str] = {
    "quantization": "value",
    "kv_cache_dtype": "value",
    "dtype": "value",
    "max_num_seqs": "value",
    "max_num_batched_tokens": "value",
    "enable_chunked_prefill": "bool",
    "enable_prefix_caching": "bool",
    "max_model_len": "value",
    "gpu_memory_utilization": "value",
    "tensor_parallel_size": "value",
    "pipeline_parallel_size": "value",
    "enforce_eager": "bool",
    "seed": "value",
    "block_size": "value",
    "distributed_executor_backend": "value",
}
# Settings that become environment variables instead of flags.
ENV_SETTINGS: dict[str, str] = {"cpu_kvcache_space_gib": "VLLM_CPU_KVCACHE_SPACE"}

CPU_DEFAULT_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
RECORDED_ENV_PREFIXES = (
    "VLLM_",
    "HF_",
    "OMP_",
    "CUDA_",
    "KMP_",
    "MKL_",
    "PYTORCH_",
    "TORCH",
    "TRANSFORMERS_",
    "TOKENIZERS_",
)
RECORDED_ENV_NAMES = ("LD_PRELOAD", "HUGGING_FACE_HUB_TOKEN", "NCCL_DEBUG")


# vLLM ``quantization`` -> the engine model's weight format (harness.hardware.memory); others: bf16.
FOUR_BIT = ("awq", "auto_awq", "awq_marlin", "gptq", "auto_gptq", "gptq_marlin", "moe_wna16", "bitsandbytes")
# vLLM's defaults on a GPU under 70 GB (the engine model's too): scheduler token budget, memory share.
DEFAULT_BATCHED_TOKENS = 2048
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


def weight_format(quantization: str, model: str) -> str:
    """none, fp8, awq or gptq for a vLLM ``quantization`` (unset: read from a model id like ``...-AWQ``)."""
    if quantization in FOUR_BIT:
        return "gptq" if "gptq" in quantization or quantization == "bitsandbytes" else "awq"
    if "fp8" in quantization or quantization.startswith("modelopt"):
        return "fp8"
    if quantization:
        return "none"
    low = model.lower()
    return "awq" if "awq" in low else "gptq" if "gptq" in low else "none"


def settings_to_flags(settings: dict[str, Scalar]) -> list[str]:
    """Map scalar settings to ``vllm serve`` flags; ``None`` omits the flag. Order follows the table."""
    flags: list[str] = []
    for key, kind in FLAG_SETTINGS.items():
        value = settings.get(key)
        if value is None:
            continue
        name = "--" + key.replace("_", "-")
        if kind == "bool":
            flags.append(name if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [name, str(value)]
    return flags


def settings_to_env(settings: dict[str, Scalar]) -> dict[str, str]:
    return {var: str(settings[key]) for key, var in ENV_SETTINGS.items() if settings.get(key) is not None}


def recorded_env(env: dict[str, str]) -> dict[str, str]:
    """The env vars that change a backend's behaviour, with secret-looking ones redacted."""
    picked = {k: v for k, v in env.items() if k.startswith(RECORDED_ENV_PREFIXES) or k in RECORDED_ENV_NAMES}
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in sorted(picked.items())}


def probe_vllm_version(python: Path) -> str | None:
    """Ask the backend env which vLLM it has, without importing vLLM (about a second)."""
    try:
        out = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


@dataclass
class VersionCache:
    """Per-interpreter memo of ``probe_vllm_version``; owned by whoever launches many cells."""

    versions: dict[str, str | None] = field(default_factory=dict)

    def get(self, python: Path) -> str | None:
        key = str(python)
        if key not in self.versions:
            self.versions[key] = probe_vllm_version(python)
        return self.versions[key]


def default_env_name() -> str:
    """The environment a vLLM server without ``python`` runs from: the GPU build where a GPU exists."""
    from harness.rundir import _gpus

    return "vllm-cpu" if _gpus() is None else "vllm-gpu"


def python_for(server: Server, home: Path) -> Path:
    """``servers[].python`` (relative paths: cwd, then TOKENBENCH_HOME), or the default environment's."""
    if not server.python:
        return venv_python(venv_dir(home, default_env_name()))
    from harness.envs import resolve_python

    return resolve_python(server.python, home)


def env_of(python: Path, home: Path) -> str | None:
    """The name of the tokenbench environment ``python`` belongs to, if it is one of ours."""
    from harness.envs import env_names

    for name in env_names():
        if python.absolute() == venv_python(venv_dir(home, name)).absolute():
            return name
    return None


def _has_flag(args: list[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def resolve_model(model: str, home: Path) -> str:
    """A model given as a path (relative to the cwd, then TOKENBENCH_HOME) becomes absolute; HF ids pass through."""
    for base in (Path.cwd(), home):
        candidate = (base / model).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
    return model


def engine_args(cell: Cell, *, cpu: bool) -> tuple[list[str], dict[str, str]]:
    """The cell's vLLM engine flags (settings, CPU defaults, ``args``) and env overrides.

    Shared by every launcher of a vLLM engine (``vllm serve`` here, ``python -m vllm_tgis_adapter``
    in the ``tgis`` backend), so one setting means the same flag on both.
    """
    server = cell.server
    settings = dict(cell.settings)
    if settings.get("max_model_len") is None and server.max_model_len is not None:
        settings["max_model_len"] = server.max_model_len
    flags = settings_to_flags(settings)
    env: dict[str, str] = {}
    if cpu:
        env.update(CPU_DEFAULT_ENV)
        if settings.get("enforce_eager") is None and not _has_flag(
            server.args, "--enforce-eager", "--no-enforce-eager"
        ):
            flags.append("--enforce-eager")
        if settings.get("distributed_executor_backend") is None and not _has_flag(
            server.args, "--distributed-executor-backend"
        ):
            flags += ["--distributed-executor-backend", "uni"]
    env.update(settings_to_env(settings))
    env.update(server.env)
    return flags + list(server.args), env


def build_command(
    cell: Cell, *, python: Path, port: int, home: Path, cpu: bool
) -> tuple[list[str], dict[str, str]]:
    """The ``vllm serve`` command line and the env overrides (not the whole environ) for one cell."""
    server = cell.server
    served = server.served_model_name or server.model
    command = [
        str(python), "-m", "vllm.entrypoints.cli.main", "serve", resolve_model(server.model, home),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", served,
    ]  # fmt: skip
    flags, env = engine_args(cell, cpu=cpu)
    return command + flags, env


class VllmBackend:
    """One vLLM server for one cell. ``start`` then ``stop``; ``stop`` is idempotent."""

    def __init__(
        self,
        *,
        home: Path,
        registry: ProcessRegistry | None = None,
        versions: VersionCache | None = None,
        grace_s: float = 15.0,
    ) -> None:
        self.home = home
        self.registry = registry
        self.versions = versions or VersionCache()
        self.grace_s = grace_s
        self.process: ManagedProcess | None = None

    def python_for(self, server: Server) -> Path:
        """The backend interpreter: ``servers[].python`` (relative paths: cwd, then TOKENBENCH_HOME) or the default."""
        return python_for(server, self.home)

    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        errors = SPEC.validate_cell(cell)
        if errors:
            raise BackendStartError("invalid vLLM settings:\n" + "\n".join(errors))
        python = self.python_for(cell.server)
        if not python.exists():
            env = SPEC.environments(cell.server, self.home)
            hint = f"run `tokenbench setup {env[0]}`" if env else "check servers[].python"
            raise BackendStartError(
                f"cell '{cell.cell_id}': vLLM interpreter {python} does not exist; {hint}"
            )
        version = self.versions.get(python)
        cpu = version is not None and "cpu" in version
        port = free_port()
        command, overrides = build_command(cell, python=python, port=port, home=self.home, cpu=cpu)
        env = {**os.environ, **overrides}
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "server.log"
        base_url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        self.process = ManagedProcess(
            command, log_path=log_path, env=env, cwd=workdir, registry=self.registry
        )
        urls = [f"{base_url}/health", f"{base_url}/v1/models"]
        await_ready("vLLM", cell.cell_id, urls, cell.server.startup_timeout_s, self.process, self.stop)
        return ServerHandle(
            base_url=base_url,
            served_model=cell.server.served_model_name or cell.server.model,
            command=redact_command(command),
            env=recorded_env(env),
            version=version,
            launch_s=time.monotonic() - started,
            log_path=log_path,
            pid=self.process.pid,
            metrics_url=f"{base_url}/metrics",
            headers={},
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate(self.grace_s)

    def log_tail(self, n: int = 50) -> list[str]:
        return tail(self.process.log_path if self.process else None, n)


class VllmSpec(BackendSpec):
    """``backend: vllm``: ``vllm serve`` from its own environment, one process tree per cell."""

    name = "vllm"
    label = "vLLM"
    Settings = VllmSettings
    protocols = ("completions", "chat")
    # vLLM 0.32 (v1 engine), checked against tests/data/vllm_cpu_0.32_metrics.txt
    server_histograms = {
        "ttft": "vllm:time_to_first_token_seconds",
        "itl": "vllm:inter_token_latency_seconds",
        "e2e": "vllm:e2e_request_latency_seconds",
        "queue": "vllm:request_queue_time_seconds",
    }

    def environments(self, server: Server, home: Path) -> list[str]:
        """The tokenbench environment the server's interpreter lives in; [] for a foreign ``python``."""
        env = env_of(python_for(server, home), home)
        return [env] if env else []

    def validation_context(self, server: Server) -> dict[str, Any]:
        """Choices recorded from the server's own vLLM (TOKENBENCH_HOME, as for the CLI), else the fallback."""
        python = python_for(server, tokenbench_home())
        return choices_context(python.parent.parent)

    def kv_fit(self, settings: dict[str, Scalar], server: Server) -> KvFitInputs:
        """``max_num_seqs`` sequences against the KV cache ``gpu_memory_utilization`` leaves."""
        seqs = settings.get("max_num_seqs")
        batched = settings.get("max_num_batched_tokens")
        fraction = settings.get("gpu_memory_utilization")
        return KvFitInputs(
            max_seqs=seqs if isinstance(seqs, int) and not isinstance(seqs, bool) else None,
            seqs_setting="max_num_seqs",
            quantization=weight_format(str(settings.get("quantization") or ""), server.model),
            kv_cache_dtype="fp8" if str(settings.get("kv_cache_dtype") or "").startswith("fp8") else "auto",
            memory_fraction=float(fraction)
            if isinstance(fraction, int | float)
            else DEFAULT_GPU_MEMORY_UTILIZATION,
            batched_tokens=int(batched) if isinstance(batched, int) else DEFAULT_BATCHED_TOKENS,
        )

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> VllmBackend:
        return VllmBackend(home=home, registry=registry)


SPEC = VllmSpec()
