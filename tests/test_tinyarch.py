"""Tiny GPT-2 next to tiny Llama: a shared tokenizer, a config matching the weights, the whole-word
guarantee checked by a reference forward pass, and Llama builds that keep their digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from cli_runner import tokenbench
from harness.assets import TINY_MODELS, check_local_model, resolve_server
from harness.scenario import Server
from harness.tinyarch import ARCHITECTURES
from harness.tinymodel import FORMAT_VERSION, TinyModelSpec, make_tiny_model, single_token_words


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "gpt2", architecture="gpt2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gpt2_is_deterministic_and_shares_the_llama_tokenizer(
    gpt2: Path, llama: Path, tmp_path: Path
) -> None:
    again = make_tiny_model(tmp_path / "again", architecture="gpt2")
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert _sha(again / name) == _sha(gpt2 / name)
    assert _sha(gpt2 / "tokenizer.json") == _sha(llama / "tokenizer.json")
    assert _sha(gpt2 / "tokenizer_config.json") == _sha(llama / "tokenizer_config.json")
    assert _sha(gpt2 / "model.safetensors") != _sha(llama / "model.safetensors")
    assert single_token_words(gpt2) == single_token_words(llama)


def test_gpt2_config_matches_weights(gpt2: Path) -> None:
    config = json.loads((gpt2 / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["tie_word_embeddings"] is False  # the head needs its own weights for the word-only rule
    tok = Tokenizer.from_file(str(gpt2 / "tokenizer.json"))
    t = load_file(str(gpt2 / "model.safetensors"))
    h, vocab = config["n_embd"], config["vocab_size"]
    assert vocab == tok.get_vocab_size()
    assert t["transformer.wte.weight"].shape == t["lm_head.weight"].shape == (vocab, h)
    assert t["transformer.wpe.weight"].shape == (config["n_positions"], h)
    assert (h // config["n_head"]) % 32 == 0  # vLLM-CPU attention head sizes
    assert t["transformer.h.0.attn.c_attn.weight"].shape == (h, 3 * h)  # HF Conv1D layout [in, out]
    assert t["transformer.h.1.mlp.c_fc.weight"].shape == (h, config["n_inner"])
    assert len([k for k in t if k.endswith("attn.c_attn.weight")]) == config["n_layer"]
    assert all(v.dtype == np.float32 for v in t.values())
    assert config["eos_token_id"] == tok.token_to_id("</s>")


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w + b


def _gelu_new(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _gpt2_logits(t: dict[str, np.ndarray], config: dict[str, int], ids: list[int]) -> np.ndarray:
    """A plain numpy GPT-2 forward pass (HF semantics): the logits at every position."""
    n_head, n = config["n_head"], len(ids)
    x = t["transformer.wte.weight"][ids] + t["transformer.wpe.weight"][:n]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(config["n_layer"]):
        p = f"transformer.h.{layer}."
        a = _layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"])
        q, k, v = np.split(a @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"], 3, axis=-1)
        heads = [z.reshape(n, n_head, -1).transpose(1, 0, 2) for z in (q, k, v)]
        scores = heads[0] @ heads[1].transpose(0, 2, 1) / np.sqrt(heads[0].shape[-1]) + mask
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attn = (weights @ heads[2]).transpose(1, 0, 2).reshape(n, -1)
        x = x + attn @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        m = _layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"])
        hidden = _gelu_new(m @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
        x = x + hidden @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    x = _layer_norm(x, t["transformer.ln_f.weight"], t["transformer.ln_f.bias"])
    return x @ t["lm_head.weight"].T


def test_gpt2_can_only_generate_whole_words(gpt2: Path) -> None:
    """At every position of varied prompts, every word outscores every non-word by a wide margin:
    greedy decoding never emits a sub-word piece or a special token, and temperature-1 sampling
    gives them a negligible share of the probability."""
    config = json.loads((gpt2 / "config.json").read_text())
    t = load_file(str(gpt2 / "model.safetensors"))
    tok = Tokenizer.from_file(str(gpt2 / "tokenizer.json"))
    word_ids = np.array([tok.token_to_id("\u0120" + w) for w in single_token_words(gpt2)])
    is_word = np.zeros(config["vocab_size"], dtype=bool)
    is_word[word_ids] = True
    assert 0 < is_word.sum() < config["vocab_size"]  # there are non-words to exclude
    rng = np.random.default_rng(3)
    chat = tok.encode("<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n").ids
    prompts = [list(rng.choice(word_ids, size=n)) for n in (1, 17, 300)] + [chat]
    for ids in prompts:
        logits = _gpt2_logits(t, config, ids)
        margin = logits[:, is_word].min(axis=1) - logits[:, ~is_word].max(axis=1)
        assert margin.min() > 10.0, margin.min()
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        assert probs[:, ~is_word].sum(axis=1).max() < 1e-8


def test_gpt2_weights_keep_channel_zero_constant(gpt2: Path) -> None:
    t = load_file(str(gpt2 / "model.safetensors"))
    assert (t["transformer.wte.weight"][:, 0] == 1.0).all()
    assert (t["transformer.wpe.weight"][:, 0] == 0.0).all()
    for layer in (0, 1):
        for proj in ("attn.c_proj", "mlp.c_proj"):
            assert (t[f"transformer.h.{layer}.{proj}.weight"][:, 0] == 0.0).all()
            assert t[f"transformer.h.{layer}.{proj}.bias"][0] == 0.0
    assert set(np.unique(t["lm_head.weight"][:, 0])) == {-4.0, 0.0}


def test_llama_digest_is_the_one_builds_made_before_architectures_had(tmp_path: Path) -> None:
    """An existing .cache/models/tiny-llama (shared, maybe being served) must be reused, not rewritten."""
    spec = TinyModelSpec()
    old = {k: v for k, v in asdict(spec).items() if k != "architecture"}
    blob = json.dumps({"format": FORMAT_VERSION, **old}, sort_keys=True).encode()
    assert spec.digest() == hashlib.sha256(blob).hexdigest()[:16]
    assert TinyModelSpec(architecture="gpt2").digest() != spec.digest()


def test_switching_architecture_in_a_folder_rebuilds_it(tmp_path: Path) -> None:
    make_tiny_model(tmp_path / "m")
    make_tiny_model(tmp_path / "m", architecture="gpt2")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "gpt2"


def test_unknown_architecture_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown tiny-model architecture 'bert'.*gpt2, llama"):
        make_tiny_model(tmp_path / "bad", architecture="bert")
    assert not (tmp_path / "bad").exists()


def test_every_local_model_names_a_known_architecture_and_resolves(tmp_path: Path) -> None:
    assert set(TINY_MODELS.values()) <= set(ARCHITECTURES)
    server = Server(name="g", backend="vllm", model="tokenbench:tiny-gpt2")
    assert check_local_model(server) == []
    resolved = resolve_server(server, tmp_path, lambda _msg: None)
    folder = tmp_path / "models" / "tiny-gpt2"  # resolve_server takes TOKENBENCH_HOME: HOME/models/NAME
    assert resolved.model == str(folder) and resolved.served_model_name == "tiny-gpt2"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    unknown = check_local_model(Server(name="x", backend="vllm", model="tokenbench:tiny-bert"))
    assert unknown and "tokenbench:tiny-gpt2" in unknown[0]


def test_make_model_cli_builds_the_chosen_architecture(tmp_path: Path) -> None:
    proc = tokenbench("make-model", tmp_path / "g", "--arch", "gpt2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "g" / "config.json").read_text())["model_type"] == "gpt2"
    bad = tokenbench("make-model", tmp_path / "b", "--arch", "bert")
    assert bad.returncode == 2 and "unknown architecture 'bert'" in bad.stdout
