"""The settings a vLLM server takes, their legal values, and where the choices come from.

Why the choices come from the installed vLLM: which ``quantization``,
``dtype`` and ``kv_cache_dtype`` values a vLLM accepts changes from release to
release (and the CPU build accepts what the GPU build does). ``tokenbench
setup`` asks the environment's own vLLM once (``harness/envs/dump_vllm_choices.py``)
and writes the answer as ``vllm-choices.json`` beside the environment's
completion marker; validation reads that file, so a typo fails at
``validate`` with the list the server would accept. Where no environment has
been built yet, the lists kept here (vLLM 0.32.0) are used, and the message
says so.

Shared by every backend that launches a vLLM engine (``vllm``, ``tgis``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from harness.backends.base import BackendSettings

CHOICES_FILE = "vllm-choices.json"
CHOICE_SETTINGS = ("quantization", "dtype", "kv_cache_dtype")

# vLLM 0.32.0's own lists (its argument parser and QUANTIZATION_METHODS), for when no env exists yet.
FALLBACK_CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "bfloat16", "float", "float16", "float32", "half"),
    "kv_cache_dtype": (
        "auto", "bfloat16", "float16", "fp8", "fp8_ds_mla", "fp8_e4m3", "fp8_e5m2", "fp8_inc",
        "fp8_per_token_head", "int4_per_token_head", "int8_per_token_head", "nvfp4", "nvfp4_4over6",
        "nvfp4_ds_mla", "turboquant_3bit_nc", "turboquant_4bit_nc", "turboquant_k3v4_nc",
        "turboquant_k8v4", "ultraquant_4bit",
    ),
    "quantization": (
        "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
        "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin",
        "humming", "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc",
        "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block",
        "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
    ),
}  # fmt: skip
FALLBACK_SOURCE = "the list kept in tokenbench for vLLM 0.32.0 (no vLLM environment set up yet)"
EXECUTOR_BACKENDS = ("ray", "mp", "uni", "external_launcher")


def read_choices(env_dir: Path) -> tuple[dict[str, tuple[str, ...]], str] | None:
    """The choices ``tokenbench setup`` recorded for the vLLM in ``env_dir``, and their source."""
    path = env_dir / CHOICES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        choices = {k: tuple(str(v) for v in data["choices"][k]) for k in CHOICE_SETTINGS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choices, f"the installed vLLM {data.get('vllm_version', '?')} ({path})"


def choices_context(env_dir: Path | None) -> dict[str, Any]:
    """The validation context for :class:`VllmSettings`: recorded choices, else the fallback."""
    found = read_choices(env_dir) if env_dir is not None else None
    choices, source = found or (FALLBACK_CHOICES, FALLBACK_SOURCE)
    return {"vllm_choices": choices, "vllm_choices_source": source}


class VllmSettings(BackendSettings):
    """``servers[].settings`` of a vLLM server; each maps to the ``vllm serve`` flag of the same name."""

    quantization: str | None = None
    kv_cache_dtype: str | None = None
    dtype: str | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    pipeline_parallel_size: int | None = Field(default=None, ge=1)
    enforce_eager: bool | None = None
    seed: int | None = None
    block_size: int | None = Field(default=None, ge=1)
    distributed_executor_backend: str | None = None
    cpu_kvcache_space_gib: float | None = Field(default=None, gt=0)

    @field_validator(*CHOICE_SETTINGS)
    @classmethod
    def _known_choice(cls, value: str | None, info: ValidationInfo) -> str | None:
        context = info.context or {}
        choices = context.get("vllm_choices", FALLBACK_CHOICES)[info.field_name]
        if value is not None and value not in choices:
            source = context.get("vllm_choices_source", FALLBACK_SOURCE)
            raise ValueError(f"{value!r} is not one of {', '.join(choices)} (from {source})")
        return value

    @field_validator("distributed_executor_backend")
    @classmethod
    def _known_executor(cls, value: str | None) -> str | None:
        if value is not None and value not in EXECUTOR_BACKENDS:
            raise ValueError(f"{value!r} is not one of {', '.join(EXECUTOR_BACKENDS)}")
        return value
