"""``backend: tgi``: Hugging Face Text Generation Inference 3.3, from its launcher or its container image.

Why two ways to start it: TGI ships as a Rust launcher (``text-generation-launcher``, which
starts the router and the Python shards) that is mostly installed *inside* its image. On a GPU
host with TGI built locally, ``settings.launcher`` runs it directly; everywhere else
``settings.container: podman`` (or ``docker``) runs ``settings.image`` (default
``ghcr.io/huggingface/text-generation-inference:3.3.7``) with the GPU, the port, the model
(a local folder, read-only, at ``/models/NAME``) and the HF cache (at ``/data``, the image's
``HF_HOME``) mapped in. Either way the cell's settings become the same launcher flags
(``tgi_settings.FLAG_SETTINGS``), followed by ``servers[].args``.

Ready: ``/health`` (the router answers only once the shards have warmed up), then ``/info``,
whose ``version`` and ``model_id`` (and sha, limits) are recorded with the exact command and
the log (``cells/<cell>/server.log``; ``launch.json`` has all of it). Protocols: ``tgi``
(``/generate_stream``) and ``chat`` (TGI's OpenAI-compatible Messages API).

Lengths: TGI has no ``ignore_eos`` and no ``min_new_tokens`` (``GenerateParameters`` in
``router/src/lib.rs`` at v3.3.7 has neither; the Messages API ignores unknown fields such as
``ignore_eos``/``min_tokens``), and ``decoder_input_details`` is refused on a stream. So an
answer may end at EOS before the requested length; the records keep the requested and the
achieved lengths and the report flags cells whose achieved mean differs from the others'.

Concurrency: the router answers 429 above ``max_concurrent_requests`` (default 128), which is
this backend's concurrency cap; the report flags steps above it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePath
from typing import Any

import httpx

from harness.backends.base import BackendSpec, BackendStartError, ConcurrencyCap, KvFitInputs, ServerHandle
from harness.backends.container import (
    ContainerRun,
    container_name,
    flavour_of,
    remove_container,
    resolve_executable,
)
from harness.backends.process import ProcessRegistry, ProcessSet, await_ready, free_port, tail
from harness.backends.tgi_settings import (
    DEFAULT_CUDA_MEMORY_FRACTION,
    DEFAULT_GPUS,
    DEFAULT_IMAGE,
    DEFAULT_LAUNCHER,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_SHM_SIZE,
    FLAG_SETTINGS,
    TgiSettings,
)
from harness.backends.vllm import recorded_env, resolve_model
from harness.matrix import Cell
from harness.owner import owner_marker
from harness.redact import redact_command
from harness.scenario import Scalar, Server

CONTAINER_PORT = 80
CONTAINER_DATA = "/data"  # the image's HF_HOME
CONTAINER_MODELS = "/models"
# Passed into a container by name when set here (values never reach the command line).
PASS_THROUGH_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_ENABLE_HF_TRANSFER")
INFO_KEYS = (
    "version", "model_id", "model_sha", "sha", "docker_label", "max_concurrent_requests",
    "max_input_tokens", "max_total_tokens", "max_client_batch_size", "router",
)  # fmt: skip
# TGI's shards keep ``TGI_WIGGLE_ROOM`` (0.90) of ``cuda_memory_fraction`` of the free memory
# for the KV cache (server/text_generation_server/models/globals.py at v3.3.7).
TGI_WIGGLE_ROOM = 0.90
TGI_DEFAULT_PREFILL_TOKENS = 4096
GRACE_S = 30.0  # the launcher's own default is 90 s (--graceful-termination-timeout)


def settings_to_flags(settings: dict[str, Scalar]) -> list[str]:
    """The cell's flag settings as launcher flags, in ``FLAG_SETTINGS`` order; ``None`` omits one."""
    flags: list[str] = []
    for key, flag in FLAG_SETTINGS.items():
        value = settings.get(key)
        if value is not None:
            flags += [flag, str(value)]
    return flags


def _flag_settings(cell: Cell) -> dict[str, Scalar]:
    """The cell's settings, with ``servers[].max_model_len`` as ``max_total_tokens`` where unset."""
    settings = dict(cell.settings)
    if settings.get("max_total_tokens") is None and cell.server.max_model_len is not None:
        settings["max_total_tokens"] = cell.server.max_model_len
    return settings


def launcher_command(
    cell: Cell, *, launcher: str, port: int, prometheus_port: int, uds_path: Path, home: Path
) -> list[str]:
    """``text-generation-launcher --model-id M --hostname 127.0.0.1 --port P ...`` for one cell.

    The Prometheus port and the shard socket are per cell (defaults 9000 and
    ``/tmp/text-generation-server`` would collide with any other TGI on the host).
    """
    command = [
        launcher, "--model-id", resolve_model(cell.server.model, home),
        "--hostname", "127.0.0.1", "--port", str(port), "--prometheus-port", str(prometheus_port),
        "--shard-uds-path", str(uds_path),
    ]  # fmt: skip
    return command + settings_to_flags(_flag_settings(cell)) + list(cell.server.args)


def default_hf_cache() -> str:
    """The host's HF cache root (``$HF_HOME``, else ``~/.cache/huggingface``), mounted at ``/data``."""
    return os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())


def container_run(
    cell: Cell, *, runtime: str, name: str, port: int, home: Path, env: dict[str, str]
) -> ContainerRun:
    """The ``podman``/``docker`` run for one cell: GPU, port, model volume, HF cache, env by name."""
    settings = cell.settings
    model = resolve_model(cell.server.model, home)
    volumes = [
        (str(Path(str(settings.get("hf_cache") or default_hf_cache())).expanduser()), CONTAINER_DATA, False)
    ]
    if Path(model).is_dir():
        inside = f"{CONTAINER_MODELS}/{PurePath(model).name}"
        volumes.append((model, inside, True))
        model = inside
    args = ["--model-id", model, "--hostname", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    args += settings_to_flags(_flag_settings(cell)) + list(cell.server.args)
    names = sorted({*cell.server.env, *(k for k in PASS_THROUGH_ENV if env.get(k))})
    return ContainerRun(
        runtime=runtime,
        flavour=flavour_of(runtime),
        name=name,
        image=str(settings.get("image") or DEFAULT_IMAGE),
        publish=[("127.0.0.1", port, CONTAINER_PORT)],
        volumes=volumes,
        env_names=names,
        gpus=str(settings.get("gpus") or DEFAULT_GPUS),
        shm_size=str(settings.get("shm_size") or DEFAULT_SHM_SIZE),
        labels={"tokenbench.owner": owner_marker(), "tokenbench.cell": cell.cell_id},
        args=args,
    )


def read_info(base_url: str) -> dict[str, str]:
    """``GET /info``'s identity and limits, as strings (``INFO_KEYS`` that the server sent)."""
    try:
        data = httpx.get(f"{base_url}/info", timeout=5).json()
    except (httpx.HTTPError, ValueError) as err:
        raise BackendStartError(f"GET {base_url}/info: {err}") from None
    if not isinstance(data, dict):
        raise BackendStartError(f"GET {base_url}/info: expected a JSON object, got {str(data)[:200]!r}")
    return {k: str(data[k]) for k in INFO_KEYS if data.get(k) is not None}


class TgiBackend:
    """One TGI server (launcher process, or container) for one cell; ``stop`` is idempotent."""

    def __init__(self, *, home: Path, registry: ProcessRegistry | None = None) -> None:
        self.home = home
        self.procs = ProcessSet(registry)
        self.container: tuple[str, str] | None = None  # (runtime, name) while one may exist
        self.env: dict[str, str] = {}
        self.log_path: Path | None = None

    def _program(self, given: str, what: str, cell: Cell) -> str:
        found = resolve_executable(given, self.home)
        if found is None:
            raise BackendStartError(
                f"cell '{cell.cell_id}': {what} {given!r} not found (as a path, or on PATH); "
                "install it, or set settings.launcher / settings.container"
            )
        return found

    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        errors = SPEC.validate_cell(cell)
        if errors:
            raise BackendStartError("invalid TGI settings:\n" + "\n".join(errors))
        server, settings = cell.server, cell.settings
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        port = free_port()
        self.env = {**os.environ, **server.env}
        launch: dict[str, Any]
        if settings.get("container"):
            runtime = self._program(str(settings["container"]), "container runtime", cell)
            run = container_run(
                cell, runtime=runtime, name=container_name("tokenbench-tgi", cell.cell_id), port=port,
                home=self.home, env=self.env,
            )  # fmt: skip
            for host, inside, _ in run.volumes:
                if inside == CONTAINER_DATA:  # the HF cache: docker would create it, podman refuses
                    Path(host).mkdir(parents=True, exist_ok=True)
            command = run.command()
            self.container = (runtime, run.name)
            launch = {"mode": run.flavour, "container": run.name, "image": run.image}
        else:
            launcher = self._program(str(settings.get("launcher") or DEFAULT_LAUNCHER), "TGI launcher", cell)
            command = launcher_command(
                cell, launcher=launcher, port=port, prometheus_port=free_port(),
                uds_path=workdir / "tgi-shard", home=self.home,
            )  # fmt: skip
            launch = {"mode": "launcher"}
        base_url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        proc = self.procs.start("server", command, log_path=self.log_path, env=self.env, cwd=workdir)
        urls = [f"{base_url}/health", f"{base_url}/info"]
        await_ready("TGI", cell.cell_id, urls, server.startup_timeout_s, proc, self.stop)
        try:
            info = read_info(base_url)
        except BackendStartError as err:
            self.stop()
            raise BackendStartError(f"cell '{cell.cell_id}': {err.message}", tail(self.log_path)) from None
        ready_s = time.monotonic() - started
        recorded = redact_command(command)
        env = recorded_env(self.env)
        version = f"text-generation-inference {info['version']}" if "version" in info else None
        info = {"launch": launch["mode"], **info}
        (workdir / "launch.json").write_text(
            json.dumps(
                {**launch, "command": recorded, "env": env, "info": info, "ready_s": ready_s}, indent=1
            ),
            encoding="utf-8",
        )
        return ServerHandle(
            base_url=base_url,
            served_model=server.served_model_name or info.get("model_id") or server.model,
            command=recorded,
            env=env,
            version=version,
            launch_s=ready_s,
            log_path=self.log_path,
            pid=proc.pid,
            metrics_url=f"{base_url}/metrics",
            headers={},
            server_info=info,
        )

    def stop(self) -> None:
        """Container first (``stop``, then ``rm -f``), then the launcher or client process group."""
        if self.container is not None:
            runtime, name = self.container
            remove_container(runtime, name, GRACE_S, self.env, self.log_path)
            self.container = None
        self.procs.terminate(GRACE_S)


def _int(settings: dict[str, Scalar], key: str) -> int | None:
    value = settings.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class TgiSpec(BackendSpec):
    """``backend: tgi``: TGI 3.3 from ``text-generation-launcher`` or its container image."""

    name = "tgi"
    label = "TGI"
    Settings = TgiSettings
    protocols = ("tgi", "chat")
    # TGI 3.x router histograms (seconds; names from TGI's metrics docs, not checked on a live TGI
    # here). TGI exports no TTFT histogram, so the self-check compares end-to-end latency.
    server_histograms = {"e2e": "tgi_request_duration", "queue": "tgi_request_queue_duration"}

    def concurrency_cap(self, settings: dict[str, Scalar]) -> ConcurrencyCap:
        """The router's ``max_concurrent_requests`` (default 128): above it TGI answers 429."""
        limit = _int(settings, "max_concurrent_requests") or DEFAULT_MAX_CONCURRENT_REQUESTS
        return ConcurrencyCap(limit, "max_concurrent_requests")

    def kv_fit(self, settings: dict[str, Scalar], server: Server) -> KvFitInputs | None:
        """``max_batch_size`` sequences against the KV cache TGI keeps (fraction × 0.90 wiggle room).

        ``max_batch_total_tokens`` is ignored by TGI 3.3 for flash-attention models (it infers the
        budget at warm-up), so it only lowers the capacity here when it is the smaller figure.
        """
        seqs = _int(settings, "max_batch_size")
        quantize = str(settings.get("quantize") or "")
        fraction = settings.get("cuda_memory_fraction") or DEFAULT_CUDA_MEMORY_FRACTION
        return KvFitInputs(
            max_seqs=seqs,
            seqs_setting="max_batch_size",
            quantization=weight_format(quantize, server.model),
            kv_cache_dtype="fp8" if str(settings.get("kv_cache_dtype") or "").startswith("fp8") else "auto",
            memory_fraction=float(fraction) * TGI_WIGGLE_ROOM,  # type: ignore[arg-type]
            batched_tokens=_int(settings, "max_batch_prefill_tokens") or TGI_DEFAULT_PREFILL_TOKENS,
            kv_token_cap=_int(settings, "max_batch_total_tokens"),
            cap_setting="max_batch_total_tokens",
        )

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> TgiBackend:
        return TgiBackend(home=home, registry=registry)


def weight_format(quantize: str, model: str) -> str:
    """The engine model's weight format (none, fp8, awq, gptq) for a TGI ``quantize`` (or the model id)."""
    if quantize in ("awq", "gptq", "marlin", "exl2", "bitsandbytes-nf4", "bitsandbytes-fp4"):
        return "gptq" if quantize != "awq" else "awq"
    if quantize in ("fp8", "eetq", "bitsandbytes"):
        return "fp8"  # 8-bit weights: one byte per parameter
    low = model.lower()
    return "awq" if "awq" in low else "gptq" if "gptq" in low else "none"


SPEC = TgiSpec()
