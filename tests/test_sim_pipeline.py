"""Pipeline parallelism in the engine mode (issue 12): stages, micro-batches, the bubble.

What these prove: each GPU holds one stage's weights and KV; a lone sequence gets no speed-up
from more stages (the bubble: one micro-batch in flight); a full batch keeps every stage busy
but still streams the weights once per micro-batch, so decode costs about what one GPU holding
the model would; sends add a cost per stage boundary; bad sizes are refused naming the value;
reports call pipeline-parallel cells uncalibrated (no published case covers them).
What they do not prove: any pipeline figure against a published one (there is none here).
"""

from __future__ import annotations

import pytest

from harness.hardware.calibration import band_label
from harness.hardware.memory import SizingError, kv_bytes_per_token, stage_layers, weight_bytes
from harness.sim.engine_options import engine_config
from harness.sim.hardware import get_gpu, get_model
from harness.sim.options import build_parser
from harness.sim.roofline import EngineConfig, Roofline, plan_memory, step_cost

A10G = get_gpu("a10g-24gb")
H100 = get_gpu("h100-80gb")
L8 = get_model("llama-3.1-8b")


def _cfg(pp: int, **kw: object) -> EngineConfig:
    base: dict[str, object] = {"gpu": H100, "model": L8, "max_model_len": 4096, "pipeline_parallel_size": pp}
    return EngineConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_each_gpu_holds_one_stage_of_weights_and_kv() -> None:
    assert stage_layers(L8, 1) == 32 and stage_layers(L8, 3) == 11  # uneven: the largest stage bounds
    assert weight_bytes(L8, pipeline_parallel_size=2) == pytest.approx(weight_bytes(L8) / 2)
    assert kv_bytes_per_token(L8, pipeline_parallel_size=4) * 4 == kv_bytes_per_token(L8)
    one, two = (plan_memory(_cfg(pp, gpu=A10G)).kv_tokens for pp in (1, 2))
    assert two > 2 * one  # half the layers per GPU and half the weights: more than twice the tokens


def test_a_lone_sequence_gains_nothing_from_more_stages() -> None:
    cost = step_cost([(1, 1000)])
    one = Roofline.of(_cfg(1)).step_s(cost)
    for pp in (2, 4):
        roof = Roofline.of(_cfg(pp))
        t = roof.step_s(cost)
        assert one <= t <= one * 1.15, (pp, one, t)
        # the bubble: each stage works 1/pp of the step, the others wait
        assert roof.stage_s(cost) == pytest.approx((t - roof.overhead_s - roof.per_seq_s) / pp, rel=0.1)


def test_a_full_batch_busies_every_stage_but_decode_still_streams_all_weights() -> None:
    cost = step_cost([(1, 500)] * 64)
    one = Roofline.of(_cfg(1)).step_s(cost)
    two = Roofline.of(_cfg(2)).step_s(cost)
    assert 0.85 * one <= two <= 1.25 * one
    # sends cost: a slower link makes the same step slower
    slow = Roofline.of(_cfg(2, gpu=A10G))
    fast = Roofline.of(_cfg(2, gpu=get_gpu("a100-80gb")))
    assert slow.send_s(32) > fast.send_s(32) > 0


def test_pipeline_sizes_are_checked() -> None:
    with pytest.raises(
        SizingError, match="pipeline_parallel_size 33: must be between 1 and the model's 32 layers"
    ):
        _cfg(33)
    with pytest.raises(SizingError, match="pipeline_parallel_size 0"):
        _cfg(0)


def test_cli_flag_is_engine_only_and_reaches_the_config() -> None:
    p = build_parser()
    exact = p.parse_args(["--port", "0", "--pipeline-parallel-size", "2"])
    with pytest.raises(ValueError, match="--pipeline-parallel-size: only used with --mode engine"):
        engine_config(exact)
    eng = p.parse_args(
        ["--port", "0", "--mode", "engine", "--gpu", "a10g-24gb", "--model-profile", "llama-3.1-8b"]
        + ["--pipeline-parallel-size", "2", "--max-model-len", "4096"]
    )
    cfg = engine_config(eng)
    assert cfg is not None and cfg.pipeline_parallel_size == 2


def test_band_label_calls_pipeline_parallel_uncalibrated() -> None:
    label = band_label("h100-80gb", "hopper-sxm", pipeline_parallel_size=2)
    assert "pipeline parallel uncalibrated" in label
    assert "pipeline" not in band_label("h100-80gb", "hopper-sxm")


def test_no_chunked_prefill_flag_reaches_the_config_and_checks_the_budget() -> None:
    p = build_parser()
    base = ["--port", "0", "--mode", "engine", "--gpu", "h100-80gb", "--model-profile", "llama-3.1-8b"]
    cfg = engine_config(p.parse_args([*base, "--max-model-len", "2048", "--max-num-batched-tokens", "2048"]))
    assert cfg is not None and cfg.chunked_prefill
    cfg = engine_config(p.parse_args([*base, "--max-model-len", "2048", "--no-chunked-prefill"]))
    assert cfg is not None and not cfg.chunked_prefill
    with pytest.raises(ValueError, match="max_num_batched_tokens 2048 is smaller than max_model_len 4096"):
        engine_config(
            p.parse_args(
                [*base, "--max-model-len", "4096", "--max-num-batched-tokens", "2048", "--no-chunked-prefill"]
            )
        )
    with pytest.raises(ValueError, match="--no-chunked-prefill: only used with --mode engine"):
        engine_config(p.parse_args(["--port", "0", "--no-chunked-prefill"]))
