"""Prompts of an exact token length, written as JSONL for the Locust users.

Why exact: prefill cost grows with prompt length, so a benchmark that asks for
512-token prompts and sends 480- or 560-token ones measures a different
workload per server (and per tokenizer). With the model's ``tokenizer.json``
we build text from vocabulary words that encode to exactly one token each
(the space-prefixed forms, e.g. ``Ġword`` / ``▁word``), then re-encode and add
or drop words until the count is exact.

Counting convention (documented because servers differ):

* ``text`` protocols (``completions``, ``tgi``, ``tgis``, Caikit): ``prompt_tokens`` is ``len(encode(text, add_special_tokens=True))``,
  i.e. it includes whatever BOS the tokenizer's post-processor adds. That is
  what vLLM reports as ``usage.prompt_tokens`` for ``/v1/completions``.
* ``chat`` protocols: the *message content* has exactly ``prompt_tokens`` tokens without
  special tokens; the server adds its chat-template overhead on top, which the
  report sees through ``usage.prompt_tokens``.

Without a tokenizer lengths are approximate (one word per requested token;
real tokenizers typically give 1-1.5 tokens per English word), and the spec is
marked ``exact=False``. Random words per prompt also defeat prefix caching, so
each request pays its full prefill.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import write_text
from harness.dataset import DatasetError, read_dataset
from harness.protocols.base import PromptStyle
from harness.workload import LengthDist

_FALLBACK_WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line"
).split()
_MIN_POOL = 16
_MAX_POOL = 4096  # plenty of variety; bounds the start-up scan of big vocabularies


class PromptError(ValueError):
    """Prompts that cannot be built or read; names the file and line."""


@dataclass(frozen=True)
class PromptSpec:
    """One request's input and requested output length (one line of the prompts JSONL)."""

    prompt_tokens: int
    output_tokens: int
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    exact: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.messages is not None:
            out["messages"] = self.messages
        else:
            out["prompt"] = self.prompt
        out["prompt_tokens"] = self.prompt_tokens
        out["output_tokens"] = self.output_tokens
        out["exact"] = self.exact
        return out

    @property
    def text(self) -> str:
        if self.messages is not None:
            return "\n".join(m.get("content", "") for m in self.messages)
        return self.prompt or ""


def _is_chat(style: PromptStyle) -> bool:
    if style not in ("text", "chat"):
        raise PromptError(f"prompt style must be 'text' or 'chat', got {style!r}")
    return style == "chat"


def draw_lengths(dist: LengthDist, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` lengths from ``dist``, clamped to [min, max] (and to >= 1)."""
    if dist.dist == "fixed":
        assert dist.value is not None
        values = np.full(count, dist.value, dtype=np.int64)
    elif dist.dist == "uniform":
        assert dist.min is not None and dist.max is not None
        values = rng.integers(dist.min, dist.max + 1, size=count)
    else:
        assert dist.mean is not None and dist.stddev is not None
        values = np.rint(rng.normal(dist.mean, dist.stddev, size=count)).astype(np.int64)
    lo = max(1, dist.min or 1)
    hi = dist.max if dist.max is not None else None
    values = np.clip(values, lo, hi)
    return [int(v) for v in values]


class _ExactText:
    """Builds text of an exact token count for one tokenizer."""

    def __init__(self, tokenizer_path: Path, add_special_tokens: bool) -> None:
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(tokenizer_path))
        except Exception as err:  # tokenizers raises a bare Exception on bad files
            raise PromptError(f"{tokenizer_path}: cannot load tokenizer: {err}") from None
        self.add_special = add_special_tokens
        self.words = self._single_token_words()
        if len(self.words) < _MIN_POOL:
            raise PromptError(
                f"{tokenizer_path}: found only {len(self.words)} single-token words; cannot build exact prompts"
            )

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=self.add_special).ids)

    def _single_token_words(self) -> list[str]:
        """Lowercase alphabetic vocabulary entries with a word-start marker that re-encode as one token."""
        pool: list[str] = []
        ref = self.tok.encode("a", add_special_tokens=False).ids
        for piece in sorted(self.tok.get_vocab()):
            if len(pool) >= _MAX_POOL:
                break
            if piece[:1] not in ("Ġ", "▁"):
                continue
            word = piece[1:]
            if not (2 <= len(word) <= 10 and word.isascii() and word.isalpha() and word.islower()):
                continue
            ids = self.tok.encode("a " + word, add_special_tokens=False).ids
            if len(ids) == len(ref) + 1:
                pool.append(word)
        return pool

    def build(self, n_tokens: int, rng: np.random.Generator) -> str:
        words = list(rng.choice(self.words, size=n_tokens + 8))
        k = max(1, n_tokens - (self.count("") if self.add_special else 0))
        for _ in range(12):
            text = " ".join(words[:k])
            have = self.count(text)
            if have == n_tokens:
                return text
            k = max(1, k + (n_tokens - have))
            while k > len(words):
                words.extend(rng.choice(self.words, size=n_tokens + 8))
        raise PromptError(f"could not build a prompt of exactly {n_tokens} tokens (closest {have})")


def build_prompts(
    tokenizer_path: Path | None,
    prompt_lengths: LengthDist,
    output_lengths: LengthDist,
    count: int,
    seed: int,
    style: PromptStyle,
) -> list[PromptSpec]:
    """``count`` seeded prompts; exact token counts when a tokenizer is given (see module docstring).

    ``style`` is the protocol's prompt convention (``ProtocolSpec.prompt_style``).
    """
    if count < 1:
        raise PromptError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    p_lens = draw_lengths(prompt_lengths, count, rng)
    o_lens = draw_lengths(output_lengths, count, rng)
    chat = _is_chat(style)
    builder = _ExactText(tokenizer_path, add_special_tokens=not chat) if tokenizer_path else None
    return [_synthetic(p, o, builder, chat, rng) for p, o in zip(p_lens, o_lens, strict=True)]


def _synthetic(
    p: int, o: int, builder: _ExactText | None, chat: bool, rng: np.random.Generator
) -> PromptSpec:
    """One synthetic prompt of ``p`` tokens (exact with a tokenizer, else one word per token)."""
    if builder is not None:
        text = builder.build(p, rng)
    else:
        text = " ".join(rng.choice(_FALLBACK_WORDS, size=p))
    return PromptSpec(
        prompt_tokens=p,
        output_tokens=o,
        prompt=None if chat else text,
        messages=[{"role": "user", "content": text}] if chat else None,
        exact=builder is not None,
    )


def load_dataset(
    path: Path,
    output_lengths: LengthDist,
    count: int,
    seed: int,
    style: PromptStyle,
    tokenizer_path: Path | None = None,
) -> list[PromptSpec]:
    """Prompts from a user JSONL (``prompt`` or ``messages`` per line), cycled to ``count``.

    A length-only line (``prompt_tokens`` + ``output_tokens``) becomes a synthetic
    prompt of that length, built like ``build_prompts``'.

    Output lengths come from ``output_lengths`` (a line's own ``output_tokens``
    wins). Prompt lengths are counted with the tokenizer when given, else
    estimated as words (marked ``exact=False``).
    """
    try:  # the same whole-file check as ``validate`` (the file may have changed since)
        rows = read_dataset(path)
    except DatasetError as err:
        raise PromptError(str(err)) from None
    tok = None
    if tokenizer_path is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
    rng = np.random.default_rng(seed)
    o_lens = draw_lengths(output_lengths, count, rng)
    chat = _is_chat(style)
    specs: list[PromptSpec] = []
    builder: _ExactText | None = None
    for i in range(count):
        row = rows[i % len(rows)]
        out = row.output_tokens if row.output_tokens is not None else o_lens[i]
        if row.prompt_tokens is not None:  # a length-only line: a synthetic prompt of that length
            if builder is None and tokenizer_path is not None:
                builder = _ExactText(tokenizer_path, add_special_tokens=not chat)
            specs.append(_synthetic(row.prompt_tokens, out, builder, chat, rng))
            continue
        messages = row.messages
        if chat and messages is None:
            messages = [{"role": "user", "content": row.prompt or ""}]
        prompt = None if chat else row.prompt
        if not chat and prompt is None:
            prompt = "\n".join(m["content"] for m in messages or [])
        text = prompt if prompt is not None else "\n".join(m["content"] for m in messages or [])
        n = len(tok.encode(text, add_special_tokens=not chat).ids) if tok else len(text.split())
        specs.append(
            PromptSpec(
                prompt_tokens=n,
                output_tokens=out,
                prompt=prompt,
                messages=messages if chat else None,
                exact=tok is not None,
            )
        )
    return specs


def write_prompts(path: Path, specs: list[PromptSpec]) -> None:
    """One JSON object per line (atomic), in the format ``read_prompts`` and the users expect."""
    write_text(path, "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in specs))


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"{path}: no such prompts file") from None
    return _parse_jsonl(text, path)


def _parse_jsonl(text: str, path: Path | str) -> list[tuple[int, dict[str, Any]]]:
    lines = text.splitlines()
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptError(f"{path}:{lineno}: not valid JSON: {err}") from None
        if not isinstance(row, dict):
            raise PromptError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, row))
    return rows


def read_prompts(path: Path) -> list[PromptSpec]:
    """Read a prompts JSONL written by ``write_prompts`` (or by hand), validating every line."""
    return _specs(_read_jsonl(path), path)


def prompts_from_text(text: str, source: str) -> list[PromptSpec]:
    """Prompts from JSONL text (a distributed worker gets the file's text in a message, not the file)."""
    return _specs(_parse_jsonl(text, source), source)


def _specs(rows: list[tuple[int, dict[str, Any]]], path: Path | str) -> list[PromptSpec]:
    specs: list[PromptSpec] = []
    for lineno, row in rows:
        has_prompt = isinstance(row.get("prompt"), str)
        messages = row.get("messages")
        if not has_prompt and not isinstance(messages, list):
            raise PromptError(f"{path}:{lineno}: needs a string 'prompt' or a 'messages' list")
        for key in ("prompt_tokens", "output_tokens"):
            value = row.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PromptError(f"{path}:{lineno}: {key}: must be a positive integer (got {value!r})")
        specs.append(
            PromptSpec(
                prompt_tokens=row["prompt_tokens"],
                output_tokens=row["output_tokens"],
                prompt=row["prompt"] if has_prompt else None,
                messages=None if has_prompt else messages,
                exact=bool(row.get("exact", False)),
            )
        )
    if not specs:
        raise PromptError(f"{path}: no prompts")
    return specs
