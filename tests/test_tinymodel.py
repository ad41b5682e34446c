"""Tiny model: deterministic files, caching by parameter hash, a loadable config, and a tokenizer
whose single-token words give exact prompt lengths."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from harness.tinymodel import MARKER_NAME, make_tiny_model, single_token_words

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def test_same_parameters_give_identical_files(model: Path, tmp_path: Path) -> None:
    again = make_tiny_model(tmp_path / "again")
    assert _hashes(again) == _hashes(model)
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert _hashes(other)["model.safetensors"] != _hashes(model)["model.safetensors"]


def test_complete_build_is_reused_and_changed_params_rebuild(tmp_path: Path) -> None:
    out = make_tiny_model(tmp_path / "m")
    weights = out / "model.safetensors"
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))  # an old mtime survives only if nothing is rewritten
    make_tiny_model(tmp_path / "m")
    assert weights.stat().st_mtime_ns == 1_000_000_000
    make_tiny_model(tmp_path / "m", seed=5)
    assert json.loads((out / MARKER_NAME).read_text())["spec"]["seed"] == 5


def test_half_finished_build_is_redone(tmp_path: Path) -> None:
    out = make_tiny_model(tmp_path / "m")
    (out / MARKER_NAME).unlink()
    (out / "config.json").write_text("{}")
    make_tiny_model(tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_config_matches_weights_and_tokenizer(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tensors = load_file(str(model / "model.safetensors"))
    assert config["vocab_size"] == tok.get_vocab_size()
    assert tensors["model.embed_tokens.weight"].shape == (config["vocab_size"], config["hidden_size"])
    assert tensors["lm_head.weight"].shape == (config["vocab_size"], config["hidden_size"])
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert head_dim % 32 == 0
    kv = config["num_key_value_heads"] * head_dim
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (kv, config["hidden_size"])
    assert len([k for k in tensors if k.endswith("q_proj.weight")]) == config["num_hidden_layers"]
    assert all(t.dtype == np.float32 for t in tensors.values())
    gen = json.loads((model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.token_to_id("</s>") == config["eos_token_id"]


def test_tokenizer_config_has_specials_and_chat_template(model: Path) -> None:
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    assert (cfg["bos_token"], cfg["eos_token"]) == ("<s>", "</s>")
    assert "add_generation_prompt" in cfg["chat_template"]
    jinja2 = pytest.importorskip("jinja2")
    text = jinja2.Template(cfg["chat_template"]).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True, bos_token="<s>"
    )
    assert text == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = tok.encode(text).ids
    assert ids[0] == tok.token_to_id("<s>") and tok.token_to_id("<|im_start|>") in ids


def test_single_token_words_give_exact_lengths_and_round_trip(model: Path) -> None:
    words = single_token_words(model)
    assert len(words) >= 1000
    assert len(set(words)) == len(words)
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    rng = np.random.default_rng(0)
    for n in (1, 7, 128, 1000):
        chosen = [words[i] for i in rng.integers(0, len(words), size=n)]
        enc = tok.encode(" ".join(chosen))
        assert len(enc.ids) == n
        decoded = tok.decode(enc.ids)
        assert decoded.split() == chosen
        assert tok.encode(decoded).ids == enc.ids
    assert single_token_words(model / "tokenizer.json") == words


def test_any_text_encodes_without_unknowns(model: Path) -> None:
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    text = "Ünïcode ✓ 12345 {json: [1,2]} \t tabs"
    assert tok.decode(tok.encode(text).ids).strip() == text.strip()


def test_bad_shape_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim 16"):
        make_tiny_model(tmp_path / "bad", hidden_size=64, num_heads=4)
