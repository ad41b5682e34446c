"""Engine-mode command-line options, and turning them into an ``EngineConfig``.

Why separate from ``options.py``: exact mode must not pay for (or be confused
by) a dozen engine flags; this module adds them to the shared parser and
validates them together, with errors that name the flag and the value, and
checks that the configuration fits in memory before the server listens.

Defaults mirror vLLM's on a GPU: ``max_num_seqs`` 256 and
``max_num_batched_tokens`` 2048 on cards under 70 GB, 1024 and 8192 on
larger ones. With ``--api tgi`` TGI's router is modelled instead: prompt +
``max_new_tokens`` reserved up front, ``--max-batch-prefill-tokens`` (default
4096) as the step's token budget and ``--max-batch-total-tokens`` as a cap on
the KV cache.
"""

from __future__ import annotations

import argparse

from harness.sim.roofline import (
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    EngineConfig,
    EngineConfigError,
    plan_memory,
)

LARGE_GPU_BYTES = 70e9
TGI_DEFAULT_PREFILL_TOKENS = 4096


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine mode (--mode engine)")
    g.add_argument(
        "--gpu", default=None, help="GPU profile, e.g. a10g-24gb (harness/hardware/data/gpus.yaml)"
    )
    g.add_argument(
        "--model-profile",
        default=None,
        help="model profile, e.g. mistral-7b (harness/hardware/data/models.yaml); default: matched from --model",
    )
    g.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="none",
        help="weights as the engine holds them: none (the profile's dtype), fp8, or 4-bit awq/gptq",
    )
    g.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="KV cache element type: auto (the model's dtype) or fp8 (half the bytes per token)",
    )
    g.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of GPU memory the engine takes for weights, activations and KV cache (vLLM's)",
    )
    g.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="most sequences in one batch (default: 256 on GPUs under 70 GB, 1024 on larger ones)",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="token budget of one engine step (default: 2048 under 70 GB, 8192 on larger GPUs)",
    )
    g.add_argument(
        "--max-batch-total-tokens",
        type=int,
        default=None,
        help="TGI (--api tgi): cap on the KV cache, tokens (default: what memory allows)",
    )
    g.add_argument(
        "--max-batch-prefill-tokens",
        type=int,
        default=None,
        help=f"TGI (--api tgi): prefill tokens per step (default: {TGI_DEFAULT_PREFILL_TOKENS})",
    )
    g.add_argument("--block-size", type=int, default=16, help="KV cache block (page) size, tokens")
    g.add_argument(
        "--step-overhead-ms",
        type=float,
        default=None,
        help="fixed part of each engine step's overhead, ms (default: the GPU class's calibrated "
        "value, harness/hardware/data/calibration.yaml; the per-sequence part always applies)",
    )
    g.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        help="GPUs the model is sharded across (weights and KV split, all-reduce per layer); default 1",
    )
    g.add_argument(
        "--pipeline-parallel-size",
        type=int,
        default=None,
        help="pipeline stages the layers are split across (micro-batched; a bubble at low batch); default 1",
    )
    g.add_argument(
        "--no-chunked-prefill",
        action="store_true",
        default=None,
        help="vLLM V0 without --enable-chunked-prefill: prefill-only steps that pause decoding "
        "(the step budget must then hold a whole max_model_len prompt)",
    )
    g.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall time = modelled time / scale (0.1 runs 10x slower than modelled)",
    )


ENGINE_ONLY = (
    "gpu",
    "model_profile",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_batch_total_tokens",
    "max_batch_prefill_tokens",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "no_chunked_prefill",
)


def engine_config(a: argparse.Namespace) -> EngineConfig | None:
    """The engine configuration for ``--mode engine`` (None in exact mode).

    Raises ``ValueError`` with a message naming the flag; the caller turns it
    into a usage error.
    """
    if a.mode != "engine":
        given = [f"--{k.replace('_', '-')}" for k in ENGINE_ONLY if getattr(a, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only used with --mode engine")
        return None
    from harness.hardware.profiles import (
        ProfileError,
        get_gpu,
        get_model,
        load_gpus,
        load_models,
        match_model,
    )

    if a.gpu is None:
        raise ValueError(f"--mode engine needs --gpu (one of {', '.join(load_gpus())})")
    try:
        gpu = get_gpu(a.gpu)
        key = a.model_profile or match_model(a.model)
        if key is None:
            raise ValueError(
                f"--model {a.model!r} matches no model profile; give --model-profile "
                f"(one of {', '.join(load_models())})"
            )
        model = get_model(key)
    except ProfileError as err:
        raise ValueError(str(err)) from None
    tgi = a.api == "tgi"
    if not tgi and (a.max_batch_total_tokens is not None or a.max_batch_prefill_tokens is not None):
        raise ValueError("--max-batch-total-tokens/--max-batch-prefill-tokens: only with --api tgi")
    large = gpu.memory_bytes >= LARGE_GPU_BYTES
    max_num_seqs = a.max_num_seqs if a.max_num_seqs is not None else (1024 if large else 256)
    if tgi:
        budget = a.max_batch_prefill_tokens or a.max_num_batched_tokens or TGI_DEFAULT_PREFILL_TOKENS
    else:
        budget = a.max_num_batched_tokens or (8192 if large else 2048)
    try:
        cfg = EngineConfig(
            gpu=gpu,
            model=model,
            quantization=a.quantization,
            kv_cache_dtype=a.kv_cache_dtype,
            gpu_memory_utilization=a.gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=a.max_model_len,
            block_size=a.block_size,
            step_overhead_s=a.step_overhead_ms / 1000 if a.step_overhead_ms is not None else None,
            tensor_parallel_size=a.tensor_parallel_size or 1,
            pipeline_parallel_size=a.pipeline_parallel_size or 1,
            chunked_prefill=not a.no_chunked_prefill,
            reserve_full=tgi,
            kv_token_limit=a.max_batch_total_tokens if tgi else None,
        )
        plan_memory(cfg)
    except EngineConfigError as err:
        raise ValueError(f"--mode engine: {err}") from None
    if a.time_scale <= 0:
        raise ValueError(f"--time-scale {a.time_scale}: must be > 0")
    return cfg
