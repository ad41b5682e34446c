"""Prompts of exact token length, length distributions, and the prompts JSONL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from harness.load.prompts import (
    PromptError,
    build_prompts,
    draw_lengths,
    load_dataset,
    read_prompts,
    write_prompts,
)
from harness.workload import LengthDist

WORDS = (
    "the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet consectetur adipiscing "
    "elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua enim minim veniam quis "
    "nostrud exercitation ullamco laboris nisi aliquip commodo consequat"
).split()


def _corpus() -> list[str]:
    rnd = random.Random(0)
    return [" ".join(rnd.choice(WORDS) for _ in range(30)) for _ in range(300)]


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style byte-level BPE without BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    path = tmp_path_factory.mktemp("tok") / "bytelevel.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def metaspace_bos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style metaspace BPE whose post-processor adds a BOS token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    path = tmp_path_factory.mktemp("tok") / "metaspace.json"
    tok.save(str(path))
    return path


@pytest.mark.parametrize("which", ["byte_level", "metaspace_bos"])
@pytest.mark.parametrize("api", ["text", "chat"])
def test_prompts_have_exact_token_counts(request: pytest.FixtureRequest, which: str, api: str) -> None:
    path: Path = request.getfixturevalue(which)
    specs = build_prompts(path, LengthDist(dist="uniform", min=1, max=200), LengthDist(value=7), 40, 3, api)
    tok = Tokenizer.from_file(str(path))
    with_specials = api != "chat"  # documented convention: chat content counts without BOS
    for spec in specs:
        assert spec.exact
        assert len(tok.encode(spec.text, add_special_tokens=with_specials).ids) == spec.prompt_tokens
        assert spec.output_tokens == 7
        if api == "chat":
            assert spec.prompt is None and spec.messages == [{"role": "user", "content": spec.text}]
        else:
            assert spec.messages is None and spec.prompt == spec.text


def test_bos_counts_toward_completions_prompt_length(metaspace_bos: Path) -> None:
    spec = build_prompts(metaspace_bos, LengthDist(value=10), LengthDist(value=1), 1, 0, "text")[0]
    tok = Tokenizer.from_file(str(metaspace_bos))
    ids = tok.encode(spec.text).ids
    assert len(ids) == 10 and ids[0] == tok.token_to_id("<s>")


def test_prompts_are_seeded_and_differ_between_requests(byte_level: Path) -> None:
    a = build_prompts(byte_level, LengthDist(value=50), LengthDist(value=5), 5, 11, "text")
    b = build_prompts(byte_level, LengthDist(value=50), LengthDist(value=5), 5, 11, "text")
    c = build_prompts(byte_level, LengthDist(value=50), LengthDist(value=5), 5, 12, "text")
    assert a == b
    assert a != c
    assert len({s.text for s in a}) == 5  # distinct prompts defeat prefix caching


def test_without_tokenizer_prompts_are_approximate_word_counts() -> None:
    specs = build_prompts(None, LengthDist(value=30), LengthDist(value=4), 3, 0, "text")
    assert all(not s.exact and len(s.text.split()) == 30 for s in specs)


def test_length_distributions_are_clamped_and_seeded() -> None:
    rng = np.random.default_rng(0)
    uni = draw_lengths(LengthDist(dist="uniform", min=5, max=9), 2000, rng)
    assert min(uni) == 5 and max(uni) == 9
    norm = draw_lengths(LengthDist(dist="normal", mean=50, stddev=40, min=10, max=80), 5000, rng)
    assert min(norm) == 10 and max(norm) == 80
    assert 40 < float(np.mean(norm)) < 60
    unbounded = draw_lengths(LengthDist(dist="normal", mean=2, stddev=5), 1000, rng)
    assert min(unbounded) >= 1
    again = draw_lengths(LengthDist(dist="uniform", min=1, max=1000), 10, np.random.default_rng(4))
    assert again == draw_lengths(LengthDist(dist="uniform", min=1, max=1000), 10, np.random.default_rng(4))


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    specs = build_prompts(None, LengthDist(value=3), LengthDist(value=2), 4, 0, "chat")
    path = tmp_path / "p.jsonl"
    write_prompts(path, specs)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and "messages" in json.loads(lines[0])
    assert read_prompts(path) == specs


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"prompt_tokens": 3, "output_tokens": 2}', "needs a string 'prompt'"),
        ('{"prompt": "x", "prompt_tokens": 0, "output_tokens": 2}', "prompt_tokens"),
        ('{"prompt": "x", "prompt_tokens": 3, "output_tokens": "2"}', "output_tokens"),
        ("[1, 2]", "JSON object"),
        ("{nope", "not valid JSON"),
    ],
)
def test_bad_prompt_lines_name_file_line_and_field(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok", "prompt_tokens": 1, "output_tokens": 1}\n' + line + "\n")
    with pytest.raises(PromptError, match=rf"p\.jsonl:2: .*{needle}|p\.jsonl:2: {needle}"):
        read_prompts(path)


def test_dataset_file_is_cycled_and_counted(tmp_path: Path, byte_level: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "the quick brown fox"}\n{"messages": [{"role": "user", "content": "lazy dog"}]}\n'
    )
    specs = load_dataset(path, LengthDist(value=9), 5, 0, "text", tokenizer_path=byte_level)
    assert len(specs) == 5
    assert specs[0].prompt == specs[2].prompt == "the quick brown fox"
    assert specs[1].prompt == "lazy dog"
    tok = Tokenizer.from_file(str(byte_level))
    assert specs[0].prompt_tokens == len(tok.encode("the quick brown fox").ids)
    chat = load_dataset(path, LengthDist(value=9), 2, 0, "chat")
    assert chat[0].messages == [{"role": "user", "content": "the quick brown fox"}]
    assert not chat[0].exact


def test_length_only_dataset_lines_become_exact_synthetic_prompts(tmp_path: Path, byte_level: Path) -> None:
    """A recorded length distribution (no texts) replays in real runs as prompts of those lengths."""
    path = tmp_path / "lengths.jsonl"
    path.write_text('{"prompt_tokens": 12, "output_tokens": 7}\n{"prompt_tokens": 30, "output_tokens": 2}\n')
    specs = load_dataset(path, LengthDist(value=99), 3, 0, "text", tokenizer_path=byte_level)
    assert [(s.prompt_tokens, s.output_tokens) for s in specs] == [(12, 7), (30, 2), (12, 7)]
    tok = Tokenizer.from_file(str(byte_level))
    assert [len(tok.encode(s.prompt or "").ids) for s in specs] == [12, 30, 12]
    assert all(s.exact for s in specs)
    chat = load_dataset(path, LengthDist(value=99), 1, 0, "chat")  # no tokenizer: one word per token
    assert chat[0].messages is not None and len(chat[0].messages[0]["content"].split()) == 12
    assert not chat[0].exact


def test_missing_prompts_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="no such prompts file"):
        read_prompts(tmp_path / "absent.jsonl")
