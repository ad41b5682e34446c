"""Tiny random-weight models (Llama, GPT-2) with a locally trained tokenizer, for offline benchmarks.

Why: benchmarking the harness end to end needs a real vLLM serving a real
model, but this machine has no GPU and no model hub. A 2-layer Llama with
random weights exercises the whole serving path (tokenizer, scheduler, KV
cache, streaming, detokenizer) in seconds on a CPU. Its outputs are noise,
which is fine: a load test measures time and token counts, not quality.

Design choices that matter to the load generator:

* Byte-level BPE with ``add_prefix_space``: any text encodes (no UNK), and a
  prompt made of words from :func:`single_token_words` joined by single
  spaces encodes to exactly one token per word, so the harness can build
  prompts of an exact token count. ``encode(decode(ids))`` round-trips for
  such word tokens.
* The model can only *generate* whole-word tokens (see ``harness.tinyarch``),
  so the streamed text re-encodes to exactly the ids the server counted: the
  client's tokenizer count and the server's ``usage`` agree, and a mismatch in
  a test means a real bug rather than random sub-word noise.
* No BOS is added by the tokenizer's post-processor, so ``usage.prompt_tokens``
  for a completion equals the number of words; the chat template adds the
  BOS and role markers itself (chat prompts carry template overhead, as with
  real models).
* Every architecture shares the tokenizer (same seed, same vocabulary), so
  prompts built for one tiny model are exact for the other and two models
  can be compared on identical token streams.
* Everything is derived from ``seed`` and the size parameters, and the output
  folder is skipped when its marker records the same parameter hash, so the
  model is built once and is byte-identical across machines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from harness import tinyarch

FORMAT_VERSION = 2
MARKER_NAME = ".tokenbench-model.json"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_PREFIX = "\u0120"  # byte-level BPE's visible space ("Ġ")


@dataclass(frozen=True)
class TinyModelSpec:
    """Every parameter that changes the generated files; its hash names the build."""

    architecture: str = "llama"
    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    distinct_words: int = 3000
    corpus_sentences: int = 20000
    init_std: float = 0.02

    def digest(self) -> str:
        params = asdict(self)
        if params["architecture"] == "llama":
            # Llama builds predate the field: leaving it out keeps their digest, so an existing
            # (possibly shared) .cache/models/tiny-llama is reused, not rewritten under a live server.
            del params["architecture"]
        blob = json.dumps({"format": FORMAT_VERSION, **params}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> None:
        tinyarch.architecture(self.architecture)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}"
            )
        head_dim = self.hidden_size // self.num_heads
        if head_dim % 32:
            # vLLM's CPU attention supports head sizes 32, 64, 80, ...; 16 fails at load time.
            raise ValueError(
                f"head_dim {head_dim} (hidden_size/num_heads) must be a multiple of 32 for vLLM-CPU"
            )
        if self.vocab_size < 512:
            raise ValueError(f"vocab_size {self.vocab_size} is too small (min 512: 256 bytes + merges)")


def _pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct pronounceable lowercase words of 1-4 syllables, in a seeded order."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), size=n))
        if rng.random() < 0.3:
            word += _CONSONANTS[int(rng.integers(0, len(_CONSONANTS)))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def synthetic_corpus(spec: TinyModelSpec) -> list[str]:
    """Seeded sentences over a Zipf-distributed pseudo-word vocabulary (like natural text's frequencies)."""
    rng = np.random.default_rng(spec.seed)
    words = _pseudo_words(rng, spec.distinct_words)
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    weights /= weights.sum()
    lengths = rng.integers(4, 24, size=spec.corpus_sentences)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=weights)
    sentences: list[str] = []
    pos = 0
    for n in lengths:
        chunk = [words[i] for i in drawn[pos : pos + n]]
        pos += n
        sentences.append(" ".join(chunk) + (", " if n % 5 == 0 else ". "))
    # Every word at least a few times, so rare words can still earn a merge.
    sentences += [" ".join(words[i : i + 16]) + "." for i in range(0, len(words), 16)] * 3
    return sentences


def train_tokenizer(spec: TinyModelSpec) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(spec), trainer=trainer)
    return tokenizer


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def is_complete(out_dir: Path, spec: TinyModelSpec) -> bool:
    marker = out_dir / MARKER_NAME
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("digest") == spec.digest()
    except (OSError, ValueError, AttributeError):
        return False


def make_tiny_model(
    out_dir: Path,
    *,
    architecture: str = "llama",
    seed: int = 0,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
) -> Path:
    """Build (or reuse) the tiny model folder and return its path.

    Skipped when ``out_dir`` already holds a complete build of the same
    parameters (marker file with their hash, written last).
    """
    spec = TinyModelSpec(
        architecture=architecture,
        seed=seed,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    spec.validate()
    out_dir = Path(out_dir)
    if is_complete(out_dir, spec):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER_NAME).unlink(missing_ok=True)

    tokenizer = train_tokenizer(spec)
    vocab = tokenizer.get_vocab_size()
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "add_bos_token": False,
            "add_eos_token": False,
            "model_max_length": spec.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(out_dir / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})
    arch = tinyarch.architecture(spec.architecture)
    _write_json(out_dir / "config.json", arch.config(spec, vocab, ids))
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]},
    )
    tensors = arch.weights(spec, vocab)
    arch.word_only(
        tensors, [tokenizer.token_to_id(_PREFIX + w) for w in _single_token_words(tokenizer)], spec
    )
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)
    _write_json(out_dir / MARKER_NAME, {"digest": spec.digest(), "spec": asdict(spec), "vocab_size": vocab})
    return out_dir


def _tokenizer_file(tokenizer_path: Path) -> Path:
    path = Path(tokenizer_path)
    return path / "tokenizer.json" if path.is_dir() else path


def single_token_words(tokenizer_path: Path) -> list[str]:
    """Words that encode to exactly one token each when separated by single spaces.

    Build a prompt of N tokens as ``" ".join(words[:N])`` (any order, repeats
    allowed): the pre-tokenizer adds the leading space, so each word becomes
    its ``Ġword`` token. Sorted by token id (frequent words first). Accepts
    the model folder or the ``tokenizer.json`` path.
    """
    return _single_token_words(Tokenizer.from_file(str(_tokenizer_file(tokenizer_path))))


def _single_token_words(tok: Tokenizer) -> list[str]:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    words: list[str] = []
    for piece, token_id in vocab:
        word = piece[1:]
        if not piece.startswith(_PREFIX) or not word.isascii() or not word.isalpha():
            continue
        if tok.encode(word).ids == [token_id]:
            words.append(word)
    return words
