"""VRAM sizing: weight bytes, KV bytes per token, activations, and the KV cache that is left.

Why pure arithmetic on public figures: "does a batch of 128 sequences of 1,280
tokens fit an A10G's KV cache?" must be answerable before a 15-minute launch,
on a machine without the GPU, and checkable by hand. The same functions size
the simulator's engine (``harness/sim/roofline.py``) and the pre-flight KV-fit
warning (``harness/kvfit.py``), so the two cannot disagree.

The plan follows vLLM's: ``memory × fraction`` is the instance's budget;
weights, a runtime overhead and the activation peak of a
``batched_tokens`` forward pass come out of it, and the rest is KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.hardware.errors import HardwareError

if TYPE_CHECKING:  # the profiles' loader (pydantic, yaml) stays out of the sim's exact-mode start-up
    from harness.hardware.profiles import GpuSpec, ModelSpec

QUANTIZATIONS = ("none", "fp8", "awq", "gptq")
KV_CACHE_DTYPES = ("auto", "fp8")
BF16_BYTES = 2.0
# 4-bit weights in groups of 128 with an fp16 scale and a 4-bit zero point per group
# (AWQ and GPTQ's common layout): 0.5 + 2/128 + 0.5/128 bytes per parameter.
INT4_GROUP_BYTES = 0.5 + 2.0 / 128 + 0.5 / 128
# CUDA context, cuBLAS/NCCL workspaces and CUDA graphs: about 1 GB in vLLM's start-up
# memory report on 24-80 GB cards; counted inside the utilisation budget, as vLLM does.
RUNTIME_OVERHEAD_BYTES = 1.0e9
LOGITS_BYTES = 8.0  # fp32 logits plus fp32 probabilities per vocab entry in the sampler


class SizingError(HardwareError):
    """A configuration that cannot be sized (it does not fit, or a bad value); names the setting."""


def stage_layers(model: ModelSpec, pipeline_parallel_size: int = 1) -> int:
    """Layers on the largest pipeline stage (vLLM splits them as evenly as it can)."""
    if not 1 <= pipeline_parallel_size <= model.layers:
        raise SizingError(
            f"pipeline_parallel_size {pipeline_parallel_size}: must be between 1 and the model's "
            f"{model.layers} layers"
        )
    return -(-model.layers // pipeline_parallel_size)


def weight_bytes(
    model: ModelSpec,
    quantization: str = "none",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> float:
    """Bytes of the weights in VRAM, on each GPU of a ``tensor_parallel_size`` group.

    ``fp8`` stores linear layers in 1 byte per parameter; ``awq``/``gptq`` in
    4 bits plus group scales. All of them keep the embedding and LM head in
    bf16, as vLLM's kernels do, which is why 4-bit is a little over a quarter.
    Tensor parallelism shards every linear layer and the vocabulary (vLLM's
    ``VocabParallelEmbedding``) across the group, so each GPU holds ``1/tp``;
    norms are replicated but are under 0.01 % of the bytes.
    """
    stage = stage_layers(model, pipeline_parallel_size) / model.layers
    return _weight_bytes(model, quantization) / _tp(tensor_parallel_size) * stage


def _tp(tensor_parallel_size: int) -> int:
    if tensor_parallel_size < 1:
        raise SizingError(f"tensor_parallel_size {tensor_parallel_size}: must be >= 1")
    return tensor_parallel_size


def kv_heads_per_gpu(model: ModelSpec, tensor_parallel_size: int = 1) -> float:
    """KV heads each GPU holds: split across the group, replicated once ``tp > kv_heads`` (as vLLM does)."""
    tp = _tp(tensor_parallel_size)
    return model.kv_heads / tp if tp <= model.kv_heads else 1.0


def _weight_bytes(model: ModelSpec, quantization: str) -> float:
    if quantization not in QUANTIZATIONS:
        raise SizingError(f"quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return model.params * BF16_BYTES
    per_param = 1.0 if quantization == "fp8" else INT4_GROUP_BYTES
    embed = model.embedding_params
    return (model.params - embed) * per_param + embed * BF16_BYTES


def kv_bytes_per_token(
    model: ModelSpec,
    kv_cache_dtype: str = "auto",
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> int:
    """K and V for one token on one GPU: ``2 × layers × kv_heads/tp × head_dim × bytes``, over the
    layers of the largest pipeline stage when the model is split in stages."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise SizingError(f"kv_cache_dtype {kv_cache_dtype!r}: expected one of {', '.join(KV_CACHE_DTYPES)}")
    dtype_bytes = 1 if kv_cache_dtype == "fp8" else 2
    return int(
        2
        * stage_layers(model, pipeline_parallel_size)
        * kv_heads_per_gpu(model, tensor_parallel_size)
        * model.head_dim
        * dtype_bytes
    )


def activation_bytes(
    model: ModelSpec, batched_tokens: int, max_seqs: int, tensor_parallel_size: int = 1
) -> float:
    """Peak activations of the profiling forward pass an engine runs before sizing the KV cache.

    The MLP is the peak: gate/up output (2 × intermediate), the activated
    product (intermediate) and a few hidden-size buffers, in bf16, for every
    batched token; plus the sampler's fp32 logits for every sequence. Under
    tensor parallelism the MLP's intermediate is sharded; the hidden-size
    buffers (after each all-reduce) and the gathered logits are not.
    """
    tp = _tp(tensor_parallel_size)
    per_token = (3 * model.intermediate_size / tp + 4 * model.hidden_size) * BF16_BYTES
    return batched_tokens * per_token + max_seqs * model.vocab_size * LOGITS_BYTES


@dataclass(frozen=True, slots=True)
class KvBudget:
    """Modelled VRAM, in bytes, and the KV cache it leaves (before rounding to blocks)."""

    budget: float
    weights: float
    overhead: float
    kv_bytes_per_token: int

    @property
    def kv_bytes(self) -> float:
        return self.budget - self.weights - self.overhead

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache the budget holds (0 when the weights alone do not fit)."""
        return max(0, int(self.kv_bytes // self.kv_bytes_per_token))


def kv_budget(
    gpu: GpuSpec,
    model: ModelSpec,
    *,
    quantization: str = "none",
    kv_cache_dtype: str = "auto",
    memory_fraction: float = 0.9,
    batched_tokens: int = 2048,
    max_seqs: int = 256,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> KvBudget:
    """What ``memory_fraction`` of one ``gpu`` leaves for KV cache after its share of weights,
    runtime and activations; with ``tensor_parallel_size`` > 1 every GPU of the group holds
    the same share, so one GPU's KV tokens are the group's; with ``pipeline_parallel_size`` > 1
    each GPU holds one stage's layers (weights and KV), the largest stage bounding the cache."""
    if not 0.0 < memory_fraction <= 1.0:
        raise SizingError(f"memory fraction {memory_fraction}: must be in (0, 1]")
    tp = tensor_parallel_size
    overhead = RUNTIME_OVERHEAD_BYTES + activation_bytes(model, batched_tokens, max_seqs, tp)
    return KvBudget(
        budget=gpu.memory_bytes * memory_fraction,
        weights=weight_bytes(model, quantization, tp, pipeline_parallel_size),
        overhead=overhead,
        kv_bytes_per_token=kv_bytes_per_token(model, kv_cache_dtype, tp, pipeline_parallel_size),
    )
