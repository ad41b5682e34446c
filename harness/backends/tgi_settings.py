"""The settings a TGI server takes: TGI 3.3's launcher flags, their legal values, and how it is started.

Why the lists are kept here: TGI ships as a Rust binary (or a container image), so there is no
Python package to ask for its choices the way ``vllm_settings`` asks the installed vLLM. The
flag names, types and value choices below are read from TGI's own ``launcher/src/main.rs``
(``struct Args`` and the ``Quantization``, ``Dtype``, ``KVCacheDtype`` value enums) at tag
**v3.3.7** (huggingface/text-generation-inference, commit
``dfb3fbe78e0d1d69251bd33065591c61bafdfaa8``), and the cross-flag rules from the same
``main()`` (and the shard's ``server/text_generation_server/cli.py`` for ``dtype`` with
``quantize``). A typo or an impossible combination then fails at ``validate``, naming the
file, the field and the value, instead of as a clap error in a container log 40 s later.

Two kinds of setting share the model:

* **flags** (``FLAG_SETTINGS``): each becomes ``--flag-name VALUE`` on the launcher;
* **launch settings** (``LAUNCH_SETTINGS``): how the launcher is started, not passed to it:
  ``launcher`` (the binary), or ``container`` (``podman``/``docker``, by name or path) with
  ``image``, ``gpus``, ``shm_size`` and ``hf_cache``. They are settings, not server fields, so
  that ``image: [...:3.3.6, ...:3.3.7]`` is a sweep like any other.

Anything else goes in ``servers[].args`` (passed to the launcher as written).
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from harness.backends.base import BackendSettings

TGI_SOURCE = "TGI 3.3.7's launcher (launcher/src/main.rs at v3.3.7)"
DEFAULT_LAUNCHER = "text-generation-launcher"
DEFAULT_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"
DEFAULT_SHM_SIZE = "1g"
DEFAULT_GPUS = "all"
# The launcher's defaults for the settings the harness reasons about (main.rs ``default_value``).
DEFAULT_MAX_CONCURRENT_REQUESTS = 128
DEFAULT_CUDA_MEMORY_FRACTION = 1.0

# ``enum Quantization`` (kebab-case names, as clap's ValueEnum and its Display print them).
QUANTIZE_CHOICES = (
    "awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
    "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8",
)  # fmt: skip
DTYPE_CHOICES = ("float16", "bfloat16")  # enum Dtype
KV_CACHE_DTYPE_CHOICES = ("fp8_e4m3fn", "fp8_e5m2")  # enum KVCacheDtype
# ``server/text_generation_server/cli.py``: "Only 1 can be set between `dtype` and `quantize`",
# except for these, which quantize a float checkpoint on load.
DTYPE_WITH_QUANTIZE = ("bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4")
CONTAINER_RUNTIMES = ("podman", "docker")
U32_MAX = 2**32 - 1

# setting -> flag, in the order the flags are written.
FLAG_SETTINGS: dict[str, str] = {
    "quantize": "--quantize",
    "dtype": "--dtype",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_concurrent_requests": "--max-concurrent-requests",
    "max_input_tokens": "--max-input-tokens",
    "max_total_tokens": "--max-total-tokens",
    "max_batch_prefill_tokens": "--max-batch-prefill-tokens",
    "max_batch_total_tokens": "--max-batch-total-tokens",
    "max_batch_size": "--max-batch-size",
    "max_waiting_tokens": "--max-waiting-tokens",
    "waiting_served_ratio": "--waiting-served-ratio",
    "num_shard": "--num-shard",
    "speculate": "--speculate",
    "cuda_memory_fraction": "--cuda-memory-fraction",
}
LAUNCH_SETTINGS = ("launcher", "container", "image", "gpus", "shm_size", "hf_cache")

Count = Annotated[int, Field(ge=1)]  # usize flags where 0 is refused (or meaningless)
U32 = Annotated[int, Field(ge=1, le=U32_MAX)]  # u32 token budgets
_GPUS = re.compile(r"^(all|none|\d+(,\d+)*)$")
_SHM = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)


def _one_of(value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)} (from {TGI_SOURCE})")
    return value


def runtime_flavour(container: str) -> str | None:
    """``podman`` or ``docker`` for a runtime given by name or path (``/usr/bin/podman``), else None."""
    name = PurePath(container).name
    return name if name in CONTAINER_RUNTIMES else None


class TgiFlagSettings(BackendSettings):
    """TGI's launcher flags (``FLAG_SETTINGS``) with TGI's value rules: what a cell may sweep wherever
    TGI runs (this host, a container, or a KServe runtime's ``args``)."""

    quantize: str | None = None
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    max_concurrent_requests: Count | None = None
    max_input_tokens: Count | None = None
    max_total_tokens: Count | None = None
    max_batch_prefill_tokens: U32 | None = None
    max_batch_total_tokens: U32 | None = None
    max_batch_size: Count | None = None  # the router refuses 0 ("`max_batch_size` must be > 0")
    max_waiting_tokens: Annotated[int, Field(ge=0)] | None = None
    waiting_served_ratio: Annotated[float, Field(ge=0)] | None = None
    num_shard: Count | None = None  # "`num_shard` cannot be < 1"
    speculate: Annotated[int, Field(ge=0)] | None = None
    cuda_memory_fraction: Annotated[float, Field(gt=0, le=1)] | None = None

    @field_validator("quantize")
    @classmethod
    def _quantize(cls, value: str | None) -> str | None:
        return _one_of(value, QUANTIZE_CHOICES)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        return _one_of(value, DTYPE_CHOICES)

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv_cache_dtype(cls, value: str | None) -> str | None:
        return _one_of(value, KV_CACHE_DTYPE_CHOICES)

    @model_validator(mode="after")
    def _together(self) -> TgiFlagSettings:
        """The launcher's own cross-flag checks (``main()``)."""
        if (
            self.max_input_tokens is not None
            and self.max_total_tokens is not None
            and self.max_input_tokens >= self.max_total_tokens
        ):
            raise ValueError(
                f"settings.max_input_tokens: must be < max_total_tokens ({self.max_total_tokens}), "
                f"got {self.max_input_tokens}"
            )
        if (
            self.max_total_tokens is not None
            and self.max_batch_total_tokens is not None
            and self.max_total_tokens > self.max_batch_total_tokens
        ):
            raise ValueError(
                f"settings.max_total_tokens: must be <= max_batch_total_tokens "
                f"({self.max_batch_total_tokens}), got {self.max_total_tokens}"
            )
        if self.dtype is not None and self.quantize is not None and self.quantize not in DTYPE_WITH_QUANTIZE:
            raise ValueError(
                f"settings.dtype: TGI takes dtype or quantize, not both (except "
                f"{', '.join(DTYPE_WITH_QUANTIZE)}); got dtype {self.dtype!r} with quantize {self.quantize!r}"
            )
        if self.quantize == "exl2" and (self.num_shard or 1) > 1:
            raise ValueError(f"settings.num_shard: exl2 cannot be sharded, got {self.num_shard}")
        return self


class TgiSettings(TgiFlagSettings):
    """``servers[].settings`` of ``backend: tgi``: the launcher flags, then how TGI is started."""

    launcher: str | None = Field(default=None, min_length=1)
    container: str | None = Field(default=None, min_length=1)
    image: str | None = Field(default=None, min_length=1)
    gpus: str | None = None
    shm_size: str | None = None
    hf_cache: str | None = Field(default=None, min_length=1)

    @field_validator("container")
    @classmethod
    def _container(cls, value: str | None) -> str | None:
        if value is not None and runtime_flavour(value) is None:
            raise ValueError(
                f"{value!r} is not a container runtime: give podman or docker, by name or by path "
                "(its file name says which flags it takes)"
            )
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: str | None) -> str | None:
        if value is not None and not _GPUS.match(value):
            raise ValueError(f"{value!r}: expected 'all', 'none' or GPU indices such as '0' or '0,1'")
        return value

    @field_validator("shm_size")
    @classmethod
    def _shm_size(cls, value: str | None) -> str | None:
        if value is not None and not _SHM.match(value):
            raise ValueError(f"{value!r}: expected a size such as 1g, 512m or 1073741824")
        return value

    @model_validator(mode="after")
    def _launch(self) -> TgiSettings:
        """The launch settings' consistency: one way to start TGI, container options only with one."""
        if self.launcher is not None and self.container is not None:
            raise ValueError(
                f"settings.launcher: give launcher (run TGI on this host) or container (run its image), "
                f"not both; got launcher {self.launcher!r} and container {self.container!r}"
            )
        if self.container is None:
            given = [k for k in ("image", "gpus", "shm_size", "hf_cache") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"settings.{given[0]}: a container setting; add 'container: podman' (or docker) "
                    f"to use it (got {getattr(self, given[0])!r})"
                )
        return self
