"""The engine mode's physics: weight bytes, KV bytes, the VRAM plan and step time.

Why a roofline and not a fitted latency model: the sim has to answer "what if"
for GPUs nobody here owns, so every figure follows from public numbers (spec
sheet bandwidth and FLOPs, the model's config) and can be checked by hand:

* decode is memory-bound: one step streams every weight once plus the KV cache
  of every running sequence, so ``t ≈ (weights + KV read) / bandwidth``;
* prefill is compute-bound: ``t ≈ 2 × params × tokens / FLOPs`` (plus attention);
* a mixed step (chunked prefill) takes ``max(compute, memory)`` plus a fixed
  per-step overhead (scheduler, kernel launches).

The VRAM plan follows vLLM's: ``memory × gpu_memory_utilization`` is the
instance's budget; weights, a runtime overhead and the activation peak of a
``max_num_batched_tokens`` forward pass come out of it, and the rest becomes
KV-cache blocks. Everything here is pure arithmetic on frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# The sizing arithmetic and the profiles are the harness's (``harness.hardware``): the KV-fit
# estimate at ``validate`` uses the same functions, so the two cannot disagree.
from harness.hardware.memory import (
    BF16_BYTES,
    INT4_GROUP_BYTES,
    KV_CACHE_DTYPES,
    LOGITS_BYTES,
    QUANTIZATIONS,
    RUNTIME_OVERHEAD_BYTES,
    SizingError,
    activation_bytes,
    kv_budget,
    kv_bytes_per_token,
    weight_bytes,
)

if TYPE_CHECKING:  # the profiles' loader (pydantic, yaml) stays out of exact mode's start-up
    from harness.hardware.profiles import GpuSpec, ModelSpec

DEFAULT_STEP_OVERHEAD_S = 0.0005
# An engine configuration that cannot run (it does not fit, or a bad value); names the setting.
EngineConfigError = SizingError

__all__ = [
    "BF16_BYTES",
    "DEFAULT_STEP_OVERHEAD_S",
    "INT4_GROUP_BYTES",
    "KV_CACHE_DTYPES",
    "LOGITS_BYTES",
    "QUANTIZATIONS",
    "RUNTIME_OVERHEAD_BYTES",
    "EngineConfig",
    "EngineConfigError",
    "MemoryPlan",
    "Roofline",
    "StepCost",
    "activation_bytes",
    "kv_bytes_per_token",
    "plan_memory",
    "step_cost",
    "weight_bytes",
]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One engine configuration: hardware, model, and the scheduler's knobs."""

    gpu: GpuSpec
    model: ModelSpec
    quantization: str = "none"
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    block_size: int = 16
    step_overhead_s: float = DEFAULT_STEP_OVERHEAD_S
    # TGI's scheduler: reserve prompt + max_new_tokens at admission (never preempts);
    # ``kv_token_limit`` is its --max-batch-total-tokens cap on the KV cache.
    reserve_full: bool = False
    kv_token_limit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise EngineConfigError(
                f"gpu_memory_utilization {self.gpu_memory_utilization}: must be in (0, 1]"
            )
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise EngineConfigError(f"{name} {getattr(self, name)}: must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise EngineConfigError(f"max_model_len {self.max_model_len}: must be >= 1")
        if self.step_overhead_s < 0:
            raise EngineConfigError(f"step_overhead {self.step_overhead_s}: must be >= 0")
        weight_bytes(self.model, self.quantization)
        kv_bytes_per_token(self.model, self.kv_cache_dtype)

    @property
    def context_len(self) -> int:
        return self.max_model_len or self.model.max_position_embeddings

    @property
    def peak_flops(self) -> float:
        """FP8 tensor cores for fp8 weights where the GPU has them; BF16 otherwise (AWQ dequantizes)."""
        if self.quantization == "fp8" and self.gpu.fp8_flops is not None:
            return self.gpu.fp8_flops
        return self.gpu.bf16_flops


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Modelled VRAM, in bytes, and the KV cache it leaves."""

    budget: float
    weights: float
    overhead: float
    kv_cache: float
    num_blocks: int
    block_size: int
    kv_bytes_per_token: int

    @property
    def total(self) -> float:
        return self.weights + self.overhead + self.kv_cache

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size


def plan_memory(cfg: EngineConfig) -> MemoryPlan:
    """Size the KV cache like vLLM; raises ``EngineConfigError`` when nothing fits."""
    sized = kv_budget(
        cfg.gpu,
        cfg.model,
        quantization=cfg.quantization,
        kv_cache_dtype=cfg.kv_cache_dtype,
        memory_fraction=cfg.gpu_memory_utilization,
        batched_tokens=cfg.max_num_batched_tokens,
        max_seqs=cfg.max_num_seqs,
    )
    budget, weights, overhead, kvb = sized.budget, sized.weights, sized.overhead, sized.kv_bytes_per_token
    left = sized.kv_bytes
    gb = 1e9
    if left <= 0:
        raise EngineConfigError(
            f"{cfg.model.key} does not fit on {cfg.gpu.key}: weights {weights / gb:.2f} GB "
            f"(quantization {cfg.quantization}) + overhead {overhead / gb:.2f} GB exceed "
            f"gpu_memory_utilization {cfg.gpu_memory_utilization} x {cfg.gpu.memory_bytes / gb:.0f} GB "
            f"= {budget / gb:.2f} GB"
        )
    num_blocks = int(left // (cfg.block_size * kvb))
    if cfg.kv_token_limit is not None:
        num_blocks = min(num_blocks, cfg.kv_token_limit // cfg.block_size)
    plan = MemoryPlan(
        budget=budget,
        weights=weights,
        overhead=overhead,
        kv_cache=float(num_blocks * cfg.block_size * kvb),
        num_blocks=num_blocks,
        block_size=cfg.block_size,
        kv_bytes_per_token=kvb,
    )
    if plan.kv_tokens < cfg.context_len:
        raise EngineConfigError(
            f"max_model_len {cfg.context_len} is larger than the KV cache can hold "
            f"({plan.kv_tokens} tokens = {plan.kv_cache / gb:.2f} GB on {cfg.gpu.key}); "
            f"set a smaller max_model_len or a higher gpu_memory_utilization"
        )
    return plan


@dataclass(frozen=True, slots=True)
class StepCost:
    """Work of one engine iteration, summed over its sequences.

    ``tokens``: new tokens computed (prefill chunks plus one per decoding
    sequence); ``attn_pairs``: query-key pairs attended (``Σ n·ctx + n(n+1)/2``);
    ``kv_tokens``: tokens of KV cache read or written.
    """

    tokens: int
    attn_pairs: int
    kv_tokens: int


def step_cost(items: list[tuple[int, int]]) -> StepCost:
    """Cost of a step from ``(new_tokens, context_before)`` per scheduled sequence."""
    tokens = pairs = kv = 0
    for n, ctx in items:
        tokens += n
        pairs += n * ctx + n * (n + 1) // 2
        kv += ctx + n
    return StepCost(tokens, pairs, kv)


@dataclass(frozen=True, slots=True)
class Roofline:
    """Step time for one configuration; built once, called every iteration."""

    weight_bytes: float
    kv_bytes_per_token: int
    params: int
    attn_flops_per_pair: float
    peak_flops: float
    bandwidth: float
    overhead_s: float

    @classmethod
    def of(cls, cfg: EngineConfig) -> Roofline:
        m = cfg.model
        return cls(
            weight_bytes=weight_bytes(m, cfg.quantization),
            kv_bytes_per_token=kv_bytes_per_token(m, cfg.kv_cache_dtype),
            params=m.params,
            attn_flops_per_pair=4.0 * m.layers * m.heads * m.head_dim,  # QK^T and AV, 2 FLOPs per MAC
            peak_flops=cfg.peak_flops,
            bandwidth=cfg.gpu.bandwidth_bps,
            overhead_s=cfg.step_overhead_s,
        )

    def compute_s(self, cost: StepCost) -> float:
        return (
            2.0 * self.params * cost.tokens + self.attn_flops_per_pair * cost.attn_pairs
        ) / self.peak_flops

    def memory_s(self, cost: StepCost) -> float:
        return (self.weight_bytes + self.kv_bytes_per_token * cost.kv_tokens) / self.bandwidth

    def step_s(self, cost: StepCost) -> float:
        """``max(compute, memory) + overhead``; a step with no tokens costs nothing."""
        if cost.tokens == 0:
            return 0.0
        return max(self.compute_s(cost), self.memory_s(cost)) + self.overhead_s
