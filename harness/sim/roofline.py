"""The engine mode's physics: weight bytes, KV bytes, the VRAM plan and step time.

Why a roofline and not a fitted latency model: the sim has to answer "what if"
for GPUs nobody here owns, so every figure follows from public numbers (spec
sheet bandwidth and FLOPs, the model's config) and can be checked by hand:

* decode is memory-bound: one step streams every weight once plus the KV cache
  of every running sequence, so ``t ≈ (weights + KV read) / achieved bandwidth``;
* prefill is compute-bound: ``t ≈ 2 × non-embedding params × tokens / achieved
  FLOPs`` plus attention, plus the LM head for the one sampled position per sequence;
* a mixed step (chunked prefill) takes ``max(compute, memory)``, plus a per-step
  overhead with a fixed part and a per-sequence part (scheduling, sampling), plus
  under tensor parallelism two all-reduces per layer over the GPU link;
* under pipeline parallelism each GPU holds one stage (``1/pp`` of the layers,
  weights and KV); the batch is cut into ``m = min(pp, sequences)`` micro-batches
  (vLLM's virtual engines), and a step is one round trip through the stages:
  ``pp × stage time of one micro-batch + (pp − 1) activation sends``. At batch
  1 only one micro-batch exists and ``pp − 1`` stages idle at any moment (the
  bubble); at large batches every stage is busy, but each stage streams its
  weights once per micro-batch, so decode is no faster than one GPU holding
  the whole model: pipeline parallelism buys KV memory, not latency.

"Achieved" is the GPU class's fitted fraction of the spec-sheet peak
(``harness/hardware/data/calibration.yaml``, every constant with its source);
weight-only 4-bit kernels (AWQ/GPTQ, and FP8 where the GPU has no FP8 tensor
cores) add a dequantization cost proportional to the tokens in the step, so
they win at batch 1 and lose at large batches, as they do in vLLM.

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
    stage_layers,
    weight_bytes,
)

if TYPE_CHECKING:  # the profiles' loader (pydantic, yaml) stays out of exact mode's start-up
    from harness.hardware.calibration import Efficiency
    from harness.hardware.profiles import GpuSpec, ModelSpec

# The old fixed overhead, kept for callers that name it; the calibrated one comes from the GPU class.
DEFAULT_STEP_OVERHEAD_S = 0.0005
ALLREDUCES_PER_LAYER = 2  # after attention's output projection and after the MLP's down projection
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
    # None: the GPU class's calibrated fixed part; a number overrides it (the per-sequence part stays).
    step_overhead_s: float | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # None: loaded for ``gpu.calibration_class``; tests and the fitter pass their own.
    efficiency: Efficiency | None = None
    # TGI's scheduler: reserve prompt + max_new_tokens at admission (never preempts);
    # ``kv_token_limit`` is its --max-batch-total-tokens cap on the KV cache.
    reserve_full: bool = False
    kv_token_limit: int | None = None
    # False: vLLM V0 without --enable-chunked-prefill (prefill-only steps; see scheduler.py).
    chunked_prefill: bool = True

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
        if not self.chunked_prefill and self.max_num_batched_tokens < self.context_len:
            raise EngineConfigError(  # vLLM refuses the same: a longest prompt could never be scheduled
                f"max_num_batched_tokens {self.max_num_batched_tokens} is smaller than max_model_len "
                f"{self.context_len}; without chunked prefill a whole prompt must fit one step"
            )
        if self.step_overhead_s is not None and self.step_overhead_s < 0:
            raise EngineConfigError(f"step_overhead {self.step_overhead_s}: must be >= 0")
        weight_bytes(self.model, self.quantization, self.tensor_parallel_size, self.pipeline_parallel_size)
        kv_bytes_per_token(self.model, self.kv_cache_dtype)
        if self.efficiency is None:
            from harness.hardware.calibration import CalibrationError, efficiency_for

            try:
                eff = efficiency_for(self.gpu.calibration_class)
            except CalibrationError as err:
                raise EngineConfigError(str(err)) from None
            object.__setattr__(self, "efficiency", eff)

    @property
    def eff(self) -> Efficiency:
        assert self.efficiency is not None  # set in __post_init__
        return self.efficiency

    @property
    def context_len(self) -> int:
        return self.max_model_len or self.model.max_position_embeddings

    @property
    def peak_flops(self) -> float:
        """Peak of the linear layers' GEMMs: FP8 tensor cores for fp8 weights where the GPU has them
        (vLLM's W8A8 kernels); BF16 otherwise (AWQ/GPTQ and Ampere's FP8 dequantize to BF16)."""
        if self.quantization == "fp8" and self.gpu.fp8_flops is not None:
            return self.gpu.fp8_flops
        return self.gpu.bf16_flops

    @property
    def dequant_factor(self) -> float:
        """Extra GEMM time of weight-only kernels, as a fraction of bf16 (0 for bf16 and W8A8 fp8)."""
        if self.quantization in ("awq", "gptq"):
            return self.eff.dequant.get(self.quantization, 0.0)
        if self.quantization == "fp8" and self.gpu.fp8_flops is None:
            return self.eff.dequant.get("fp8_weight_only", 0.0)
        return 0.0


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
        tensor_parallel_size=cfg.tensor_parallel_size,
        pipeline_parallel_size=cfg.pipeline_parallel_size,
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
    sequence), of which ``prefill_tokens`` in chunks of more than one token;
    ``seqs``: sequences in the step (each gets its LM head and sampler);
    ``attn_pairs``: query-key pairs attended (``Σ n·ctx + n(n+1)/2``);
    ``kv_tokens``: tokens of KV cache read or written.
    """

    tokens: int
    attn_pairs: int
    kv_tokens: int
    seqs: int = 0
    prefill_tokens: int = 0


def step_cost(items: list[tuple[int, int]]) -> StepCost:
    """Cost of a step from ``(new_tokens, context_before)`` per scheduled sequence."""
    tokens = pairs = kv = prefill = 0
    for n, ctx in items:
        tokens += n
        pairs += n * ctx + n * (n + 1) // 2
        kv += ctx + n
        if n > 1:
            prefill += n
    return StepCost(tokens, pairs, kv, len(items), prefill)


@dataclass(frozen=True, slots=True)
class Roofline:
    """Step time for one configuration, on each GPU of its tensor-parallel group; built once."""

    weight_bytes: float
    kv_bytes_per_token: int
    linear_params: int
    lm_head_params: int
    attn_flops_per_pair: float
    peak_flops: float
    attn_peak_flops: float
    bandwidth: float
    overhead_s: float
    per_seq_s: float
    eff: Efficiency
    dequant: float = 0.0
    tp: int = 1
    hidden_size: int = 0
    layers: int = 0
    link_bps: float = 1.0
    allreduce_latency_s: float = 0.0
    pp: int = 1

    @classmethod
    def of(cls, cfg: EngineConfig) -> Roofline:
        m, tp, pp, eff = cfg.model, cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.eff
        lm_head = m.vocab_size * m.hidden_size
        layers = stage_layers(m, pp)  # per GPU: the largest stage's (all of them without pp)
        share = layers / m.layers
        return cls(
            weight_bytes=weight_bytes(m, cfg.quantization, tp, pp),
            kv_bytes_per_token=kv_bytes_per_token(m, cfg.kv_cache_dtype, tp, pp),
            # The embedding lookup is a gather, not a GEMM: only the transformer's linear layers
            # run for every token; the LM head runs once per sequence (the sampled position), on
            # the last stage, which is counted whole: the slowest stage sets the pipeline's pace.
            linear_params=int((m.params - m.embedding_params - m.hidden_size) * share),
            lm_head_params=lm_head,
            attn_flops_per_pair=4.0 * layers * m.heads * m.head_dim,  # QK^T and AV, 2 FLOPs per MAC
            peak_flops=cfg.peak_flops,
            attn_peak_flops=cfg.gpu.bf16_flops,
            bandwidth=cfg.gpu.bandwidth_bps,
            overhead_s=eff.step_fixed_s if cfg.step_overhead_s is None else cfg.step_overhead_s,
            per_seq_s=eff.step_per_seq_s,
            eff=eff,
            dequant=cfg.dequant_factor,
            tp=tp,
            hidden_size=m.hidden_size,
            layers=layers,
            link_bps=cfg.gpu.interconnect_bps,
            allreduce_latency_s=cfg.gpu.allreduce_latency_s,
            pp=pp,
        )

    def compute_s(self, cost: StepCost) -> float:
        """GEMMs and attention on one GPU (each holds ``1/tp`` of every layer)."""
        e = self.eff
        decode_tokens = cost.tokens - cost.prefill_tokens
        lin = 2.0 * self.linear_params
        linear = lin * cost.prefill_tokens / (self.peak_flops * e.prefill_flops)
        linear += lin * decode_tokens / (self.peak_flops * e.decode_flops)
        flops_eff = e.prefill_flops if cost.prefill_tokens else e.decode_flops
        # Weight-only kernels dequantize on the fly: extra work per token, so it grows with the batch.
        dequant = self.dequant * lin * cost.tokens / (self.attn_peak_flops * flops_eff)
        other = (self.attn_flops_per_pair * cost.attn_pairs + 2.0 * self.lm_head_params * cost.seqs) / (
            self.attn_peak_flops * flops_eff
        )
        return (linear + dequant + other) / self.tp

    def memory_s(self, cost: StepCost) -> float:
        bw_eff = self.eff.decode_bw if cost.tokens > cost.prefill_tokens else self.eff.prefill_bw
        return (self.weight_bytes + self.kv_bytes_per_token * cost.kv_tokens) / (self.bandwidth * bw_eff)

    def allreduce_s(self, cost: StepCost) -> float:
        """Two ring all-reduces of the step's activations per layer; zero without tensor parallelism."""
        if self.tp == 1:
            return 0.0
        nbytes = cost.tokens * self.hidden_size * BF16_BYTES
        one = self.allreduce_latency_s + 2.0 * (self.tp - 1) / self.tp * nbytes / self.link_bps
        return ALLREDUCES_PER_LAYER * self.layers * one

    def stage_s(self, cost: StepCost) -> float:
        """One GPU's work on ``cost``: ``max(compute, memory) + all-reduce``."""
        return max(self.compute_s(cost), self.memory_s(cost)) + self.allreduce_s(cost)

    def send_s(self, tokens: float) -> float:
        """One stage-to-stage send of ``tokens`` hidden states (the link's latency as its fixed part)."""
        return self.allreduce_latency_s + tokens * self.hidden_size * BF16_BYTES / self.link_bps

    def pipeline_s(self, cost: StepCost) -> float:
        """A round trip of the batch's micro-batches through the ``pp`` stages (see the module docstring)."""
        m = max(1, min(self.pp, cost.seqs))

        def part(x: int) -> int:
            return -(-x // m)

        micro = StepCost(
            part(cost.tokens),
            part(cost.attn_pairs),
            part(cost.kv_tokens),
            part(cost.seqs),
            part(cost.prefill_tokens),
        )
        return self.pp * self.stage_s(micro) + (self.pp - 1) * self.send_s(micro.tokens)

    def step_s(self, cost: StepCost) -> float:
        """``max(compute, memory) + all-reduce + fixed + per-sequence overhead`` (a pipeline round trip
        in place of the first two under pipeline parallelism); an empty step costs nothing."""
        if cost.tokens == 0:
            return 0.0
        work = self.stage_s(cost) if self.pp == 1 else self.pipeline_s(cost)
        return work + self.overhead_s + self.per_seq_s * cost.seqs
