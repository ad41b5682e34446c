"""Engine mode's pure model: the issue's sanity figures, the scheduler, the profiles.

Figures follow from public specs (Mistral-7B-v0.3 config.json, the A10G's
24 GB / 600 GB/s / 125 TFLOPS); the hand calculations are written out here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sim.engine import simulate
from harness.sim.hardware import ProfileError, get_gpu, get_model, load_gpus, load_models, match_model
from harness.sim.roofline import (
    EngineConfig,
    EngineConfigError,
    Roofline,
    kv_bytes_per_token,
    plan_memory,
    step_cost,
    weight_bytes,
)
from harness.sim.scheduler import Scheduler, Seq

A10G = get_gpu("a10g-24gb")
MISTRAL = get_model("mistral-7b")


def cfg(**kw: object) -> EngineConfig:
    base: dict[str, object] = {"gpu": A10G, "model": MISTRAL, "max_model_len": 8192}
    return EngineConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_mistral_bf16_weights_are_about_14_5_gb() -> None:
    assert weight_bytes(MISTRAL) == 7_248_023_552 * 2
    assert 14.3e9 < weight_bytes(MISTRAL) < 14.7e9


def test_kv_budget_on_a10g_at_0_9_matches_hand_calculation() -> None:
    plan = plan_memory(cfg(gpu_memory_utilization=0.9, max_num_batched_tokens=2048, max_num_seqs=256))
    budget = 24e9 * 0.9  # 21.6 GB
    weights = 14_496_047_104  # 7,248,023,552 params x 2 bytes
    # runtime 1 GB + MLP activations 2048 tokens x (3 x 14336 + 4 x 4096) x 2 B + logits 256 x 32768 x 8 B
    overhead = 1_000_000_000 + 2048 * 59_392 * 2 + 256 * 32_768 * 8
    assert overhead == 1_310_378_496
    per_token = 2 * 32 * 8 * 128 * 2  # K and V x layers x kv_heads x head_dim x bf16
    assert kv_bytes_per_token(MISTRAL) == per_token == 131_072
    left = budget - weights - overhead  # 5,793,574,400 bytes
    assert plan.budget == pytest.approx(budget)
    assert plan.weights == weights and plan.overhead == pytest.approx(overhead)
    assert plan.num_blocks == int(left // (16 * per_token)) == 2762
    assert plan.kv_cache == 2762 * 16 * per_token
    assert plan.total == pytest.approx(weights + overhead + plan.kv_cache)
    assert plan.total <= budget


def test_fp8_kv_cache_halves_bytes_per_token_and_doubles_blocks() -> None:
    assert kv_bytes_per_token(MISTRAL, "fp8") * 2 == kv_bytes_per_token(MISTRAL)
    auto, fp8 = plan_memory(cfg()), plan_memory(cfg(kv_cache_dtype="fp8"))
    assert fp8.num_blocks in (2 * auto.num_blocks, 2 * auto.num_blocks + 1)


def test_batch1_decode_step_is_weights_over_bandwidth() -> None:
    roof = Roofline.of(cfg())
    step = roof.step_s(step_cost([(1, 512)]))
    assert 14.496e9 / 600e9 == pytest.approx(0.02416, rel=1e-3)
    # At the achieved bandwidth (the class's decode_bw_eff) plus the fixed and one sequence's overhead.
    eff = roof.eff
    kv = 513 * kv_bytes_per_token(MISTRAL)
    expected = (14.496e9 + kv) / (600e9 * eff.decode_bw) + eff.step_fixed_s + eff.step_per_seq_s
    assert step == pytest.approx(expected, rel=2e-3)
    assert roof.memory_s(step_cost([(1, 512)])) > roof.compute_s(step_cost([(1, 512)]))


def test_awq_is_about_a_quarter_of_the_bytes_and_decodes_faster() -> None:
    bf16, awq = weight_bytes(MISTRAL), weight_bytes(MISTRAL, "awq")
    # 4-bit + group scales for linear layers; embeddings and LM head stay bf16, so a bit over 1/4.
    assert 0.25 < awq / bf16 < 0.32
    one = step_cost([(1, 512)])
    assert Roofline.of(cfg(quantization="awq")).step_s(one) < 0.4 * Roofline.of(cfg()).step_s(one)
    assert plan_memory(cfg(quantization="awq")).num_blocks > 2 * plan_memory(cfg()).num_blocks


def test_prefill_is_compute_bound() -> None:
    roof = Roofline.of(cfg())
    cost = step_cost([(2048, 0)])
    assert roof.compute_s(cost) > roof.memory_s(cost)
    assert roof.compute_s(cost) >= 2 * MISTRAL.params * 2048 / 125e12


def _tput(config_kw: dict[str, object], prompt: int, out: int, batches: list[int]) -> dict[int, object]:
    results = {}
    for b in batches:
        results[b] = simulate(cfg(max_num_seqs=b, **config_kw), [(prompt, out)] * max(2 * b, 8))
    return results


def test_throughput_grows_with_batch_then_flattens_at_the_kv_limit() -> None:
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    res = _tput({"max_num_batched_tokens": 8192}, 1024, 256, batches)
    tput = [res[b].output_tok_s for b in batches]  # type: ignore[attr-defined]
    assert all(b >= a * 0.98 for a, b in zip(tput, tput[1:], strict=False)), tput
    assert tput[3] > 5 * tput[0]  # memory-bound: batching is nearly free
    assert tput[-1] < 1.1 * tput[-3]  # 64 -> 256 gains nothing: the KV cache is full
    kv_seqs = plan_memory(cfg(max_num_batched_tokens=8192)).kv_tokens // 1024
    assert res[256].max_running <= kv_seqs + 1  # type: ignore[attr-defined]
    assert res[256].preemptions > 0 and res[1].preemptions == 0  # type: ignore[attr-defined]


def test_throughput_flattens_at_the_compute_roof() -> None:
    # AWQ's dequantization makes it compute-bound from small batches on (see the AWQ test below).
    batches = [4, 16, 256, 512]
    res = _tput({"quantization": "awq", "max_num_batched_tokens": 8192}, 32, 128, batches)
    tput = [res[b].output_tok_s for b in batches]  # type: ignore[attr-defined]
    roof = 125e12 / (2 * MISTRAL.params)  # tokens/s if every FLOP went to output tokens
    assert tput[1] > 2.5 * tput[0]
    assert all(t < roof for t in tput)
    assert tput[3] < 1.15 * tput[2]  # compute-bound: a bigger batch only makes steps longer
    assert res[512].preemptions == 0  # type: ignore[attr-defined]


def test_model_that_does_not_fit_is_refused_naming_sizes() -> None:
    with pytest.raises(EngineConfigError, match=r"llama-3.1-70b does not fit on a10g-24gb: weights 141"):
        plan_memory(EngineConfig(gpu=A10G, model=get_model("llama-3.1-70b")))
    with pytest.raises(EngineConfigError, match="max_model_len 131072 is larger than the KV cache"):
        plan_memory(EngineConfig(gpu=A10G, model=get_model("llama-3.1-8b")))
    with pytest.raises(EngineConfigError, match="gpu_memory_utilization 1.5"):
        cfg(gpu_memory_utilization=1.5)
    with pytest.raises(EngineConfigError, match="quantization 'int3'"):
        cfg(quantization="int3")


# scheduler -------------------------------------------------------------------


def run_all(s: Scheduler, seqs: list[Seq]) -> list[list[Seq]]:
    """Run to completion; the per-step list of sequences that got a token."""
    for q in seqs:
        s.add(q)
    steps = []
    while not s.idle:
        plan = s.schedule()
        steps.append([e.seq for e in s.complete(plan)])
        assert len(steps) < 10_000
    return steps


def test_chunked_prefill_splits_a_long_prompt_over_the_token_budget() -> None:
    s = Scheduler(num_blocks=100, block_size=4, max_num_seqs=4, token_budget=4)
    q = Seq(prompt_tokens=10, target_tokens=3)
    s.add(q)
    shapes = []
    while not s.idle:
        plan = s.schedule()
        shapes.append(plan.shape())
        s.complete(plan)
    assert shapes == [[(4, 0)], [(4, 4)], [(2, 8)], [(1, 10)], [(1, 11)]]
    assert q.generated == 3 and s.free_blocks == 100


def test_without_chunked_prefill_prefills_run_alone_and_whole() -> None:
    """vLLM V0 without chunking: a step is all whole prompts or all decodes, never both."""
    s = Scheduler(num_blocks=100, block_size=4, max_num_seqs=4, token_budget=10, chunked_prefill=False)
    a, b, c = (
        Seq(prompt_tokens=6, target_tokens=3),
        Seq(prompt_tokens=3, target_tokens=2),
        Seq(prompt_tokens=8, target_tokens=1),
    )
    for q in (a, b):
        s.add(q)
    shapes = []
    plan = s.schedule()
    shapes.append(plan.shape())
    s.complete(plan)
    s.add(c)  # arrives while a and b decode: its prefill pauses them
    while not s.idle:
        plan = s.schedule()
        shapes.append(plan.shape())
        s.complete(plan)
    assert shapes == [[(6, 0), (3, 0)], [(8, 0)], [(1, 6), (1, 3)], [(1, 7)]]
    assert (a.generated, b.generated, c.generated) == (3, 2, 1) and s.free_blocks == 100


def test_without_chunked_prefill_the_budget_must_hold_a_whole_prompt() -> None:
    gpu, model = get_gpu("h100-80gb"), get_model("llama-3.1-8b")
    with pytest.raises(
        EngineConfigError, match="max_num_batched_tokens 2048 is smaller than max_model_len 4096"
    ):
        EngineConfig(
            gpu=gpu, model=model, max_model_len=4096, max_num_batched_tokens=2048, chunked_prefill=False
        )
    assert (
        EngineConfig(gpu=gpu, model=model, max_model_len=2048, chunked_prefill=False).chunked_prefill is False
    )


def test_max_num_seqs_queues_the_rest() -> None:
    s = Scheduler(num_blocks=100, block_size=16, max_num_seqs=2, token_budget=100)
    seqs = [Seq(prompt_tokens=4, target_tokens=3) for _ in range(3)]
    steps = run_all(s, seqs)
    assert steps[0] == seqs[:2] and seqs[2] not in [q for st in steps[:3] for q in st]
    assert all(q.generated == 3 for q in seqs) and s.preemptions_total == 0


def test_preemption_when_kv_runs_out_recomputes_the_newest() -> None:
    s = Scheduler(num_blocks=4, block_size=4, max_num_seqs=8, token_budget=100)
    old, new = Seq(prompt_tokens=6, target_tokens=8), Seq(prompt_tokens=6, target_tokens=8)
    steps = run_all(s, [old, new])
    assert s.preemptions_total >= 1 and new.preemptions >= 1 and old.preemptions == 0
    assert old.generated == new.generated == 8
    assert sum(st.count(new) for st in steps) == 8  # recompute keeps the tokens already sent
    assert s.free_blocks == 4


def test_reserve_full_never_preempts_it_queues() -> None:
    s = Scheduler(num_blocks=4, block_size=4, max_num_seqs=8, token_budget=100, reserve_full=True)
    a, b = Seq(prompt_tokens=6, target_tokens=8), Seq(prompt_tokens=6, target_tokens=8)
    steps = run_all(s, [a, b])
    assert s.preemptions_total == 0
    first_b = next(i for i, st in enumerate(steps) if b in st)
    last_a = max(i for i, st in enumerate(steps) if a in st)
    assert first_b > last_a


def test_abort_frees_blocks_and_stops_tokens() -> None:
    s = Scheduler(num_blocks=10, block_size=4, max_num_seqs=4, token_budget=100)
    q = Seq(prompt_tokens=8, target_tokens=50)
    s.add(q)
    plan = s.schedule()
    assert s.free_blocks == 8
    s.abort(q)
    assert s.complete(plan) == [] and s.free_blocks == 10 and s.idle


# profiles ----------------------------------------------------------------------


def test_shipped_profiles_load_and_match_served_names() -> None:
    assert set(load_gpus()) >= {"a10g-24gb", "l4-24gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb"}
    assert set(load_models()) >= {"mistral-7b", "llama-3.1-8b", "llama-3.1-70b", "granite-3-8b", "qwen2.5-7b"}
    assert match_model("mistralai/Mistral-7B-Instruct-v0.3") == "mistral-7b"
    assert match_model("TheBloke/Mistral-7B-Instruct-v0.2-AWQ") == "mistral-7b"
    assert match_model("meta-llama/Llama-3.1-70B-Instruct") == "llama-3.1-70b"
    assert match_model("org/unknown-3b") is None
    with pytest.raises(ProfileError, match="gpu 'a10'.*known: a10g-24gb"):
        get_gpu("a10")


def test_bad_profile_file_names_file_profile_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    text = (Path(__file__).parent.parent / "harness/hardware/data/models.yaml").read_text()
    bad.write_text(text.replace("layers: 32", "layers: 31", 1))
    with pytest.raises(ProfileError, match=r"models.yaml: mistral-7b.*params 7248023552 disagrees"):
        load_models(bad)
    bad.write_text("models:\n  m:\n    layers: -1\n")
    with pytest.raises(ProfileError, match=r"models.yaml: m\.layers: .*greater than 0"):
        load_models(bad)
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(
        "gpus:\n  g:\n    name: x\n    memory_gb: 24\n    bandwidth_gbps: fast\n    bf16_tflops: 1\n"
    )
    with pytest.raises(ProfileError, match=r"gpus.yaml: g\.bandwidth_gbps"):
        load_gpus(gpus)
    gpus.write_text("[]")
    with pytest.raises(ProfileError, match="top-level 'gpus:'"):
        load_gpus(gpus)
