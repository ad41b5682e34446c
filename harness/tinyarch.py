"""Per-architecture weights and ``config.json`` for the tiny random-weight models.

Why a module of its own: the tokenizer, the caching and the file layout
(``harness.tinymodel``) are shared by every tiny model, while tensor names,
shapes and the config keys are what makes a model *Llama* or *GPT-2* to vLLM.
Adding an architecture is one builder here plus one entry in
``ARCHITECTURES``.

Every architecture keeps the same contract with the load generator: only
whole-word tokens can be generated. Each builder reserves hidden channel 0 as
a constant (1.0 in every token embedding, never written by attention or MLP
outputs, no position embedding on it), so after the final norm it is large and
positive; the output head gives every non-word token a negative weight on that
channel, which puts those logits far below every word's. Random weights then
generate arbitrary *words*, so the streamed text re-encodes to exactly the ids
the server counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from harness.tinymodel import TinyModelSpec

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class Architecture:
    """How to lay out one architecture's random weights and the config vLLM loads them with."""

    name: str
    weights: Callable[[TinyModelSpec, int], Tensors]
    config: Callable[[TinyModelSpec, int, dict[str, int]], dict[str, object]]
    word_only: Callable[[Tensors, list[int], TinyModelSpec], None]


def _normal(rng: np.random.Generator, std: float) -> Callable[..., np.ndarray]:
    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    return normal


def _head_word_only(head: np.ndarray, word_ids: list[int], weight: float) -> None:
    head[:, 0] = weight
    head[word_ids, 0] = 0.0


# --- Llama: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, no biases.


def _llama_weights(spec: TinyModelSpec, vocab: int) -> Tensors:
    """Random Llama weights in HF naming; float32 (vLLM-CPU accepts it; numpy has no bf16)."""
    normal = _normal(np.random.default_rng(spec.seed + 1), spec.init_std)
    h, i = spec.hidden_size, spec.intermediate_size
    head_dim = h // spec.num_heads
    kv = spec.num_kv_heads * head_dim
    tensors: Tensors = {"model.embed_tokens.weight": normal(vocab, h)}
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        tensors[p + "self_attn.q_proj.weight"] = normal(spec.num_heads * head_dim, h)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv, h)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv, h)
        tensors[p + "self_attn.o_proj.weight"] = normal(h, spec.num_heads * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = normal(i, h)
        tensors[p + "mlp.up_proj.weight"] = normal(i, h)
        tensors[p + "mlp.down_proj.weight"] = normal(h, i)
        tensors[p + "input_layernorm.weight"] = np.ones(h, dtype=np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, dtype=np.float32)
    tensors["model.norm.weight"] = np.ones(h, dtype=np.float32)
    tensors["lm_head.weight"] = normal(vocab, h)
    return tensors


def _llama_word_only(tensors: Tensors, word_ids: list[int], spec: TinyModelSpec) -> None:
    """Constant channel 0: set in the embedding, zeroed in the rows of o_proj and down_proj (HF [out, in])."""
    tensors["model.embed_tokens.weight"][:, 0] = 1.0
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        tensors[p + "self_attn.o_proj.weight"][0, :] = 0.0
        tensors[p + "mlp.down_proj.weight"][0, :] = 0.0
    # -1.0 puts non-words about 7 nats down: never picked greedily. Kept, so that Llama builds stay
    # byte-identical to those made before the other architectures existed.
    _head_word_only(tensors["lm_head.weight"], word_ids, -1.0)


def _llama_config(spec: TinyModelSpec, vocab: int, ids: dict[str, int]) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.hidden_size // spec.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "initializer_range": spec.init_std,
        "use_cache": True,
    }


# --- GPT-2: LayerNorm with biases, learned absolute positions, full multi-head attention
# (``num_kv_heads`` is not used), fused QKV, GELU MLP, biases everywhere.
# HF stores its projections as Conv1D, i.e. [in, out]; vLLM transposes them when loading.


def _gpt2_weights(spec: TinyModelSpec, vocab: int) -> Tensors:
    normal = _normal(np.random.default_rng(spec.seed + 1), spec.init_std)
    h, i = spec.hidden_size, spec.intermediate_size

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    tensors: Tensors = {
        "transformer.wte.weight": normal(vocab, h),
        "transformer.wpe.weight": normal(spec.max_position_embeddings, h),
    }
    for layer in range(spec.num_layers):
        p = f"transformer.h.{layer}."
        tensors[p + "ln_1.weight"], tensors[p + "ln_1.bias"] = ones(h), zeros(h)
        tensors[p + "attn.c_attn.weight"], tensors[p + "attn.c_attn.bias"] = normal(h, 3 * h), normal(3 * h)
        tensors[p + "attn.c_proj.weight"], tensors[p + "attn.c_proj.bias"] = normal(h, h), normal(h)
        tensors[p + "ln_2.weight"], tensors[p + "ln_2.bias"] = ones(h), zeros(h)
        tensors[p + "mlp.c_fc.weight"], tensors[p + "mlp.c_fc.bias"] = normal(h, i), normal(i)
        tensors[p + "mlp.c_proj.weight"], tensors[p + "mlp.c_proj.bias"] = normal(i, h), normal(h)
    tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"] = ones(h), zeros(h)
    tensors["lm_head.weight"] = normal(vocab, h)
    return tensors


def _gpt2_word_only(tensors: Tensors, word_ids: list[int], spec: TinyModelSpec) -> None:
    """Constant channel 0 under LayerNorm: nothing but the token embedding writes it.

    LayerNorm subtracts the mean, but a channel held at 1.0 while the others
    are a few hundredths still normalizes to a large positive value, so the
    same head trick as Llama's works. The head weight is -4.0 rather than
    Llama's -1.0: at -1.0 non-words keep about 5e-4 of the probability mass
    per token at temperature 1 (a few percent of 64-token streams would
    contain one); at -4.0 they are about 28 nats down.
    """
    tensors["transformer.wte.weight"][:, 0] = 1.0
    tensors["transformer.wpe.weight"][:, 0] = 0.0
    for layer in range(spec.num_layers):
        p = f"transformer.h.{layer}."
        for proj in ("attn.c_proj", "mlp.c_proj"):
            tensors[p + proj + ".weight"][:, 0] = 0.0  # Conv1D [in, out]: column 0 writes channel 0
            tensors[p + proj + ".bias"][0] = 0.0
    _head_word_only(tensors["lm_head.weight"], word_ids, -4.0)


def _gpt2_config(spec: TinyModelSpec, vocab: int, ids: dict[str, int]) -> dict[str, object]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab,
        "n_embd": spec.hidden_size,
        "n_inner": spec.intermediate_size,
        "n_layer": spec.num_layers,
        "n_head": spec.num_heads,
        "n_positions": spec.max_position_embeddings,
        "n_ctx": spec.max_position_embeddings,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "initializer_range": spec.init_std,
        "use_cache": True,
    }


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", _llama_weights, _llama_config, _llama_word_only),
    "gpt2": Architecture("gpt2", _gpt2_weights, _gpt2_config, _gpt2_word_only),
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown tiny-model architecture {name!r} (known: {known})") from None
