"""A user's prompt dataset (JSONL): read and checked whole, line by line.

Why its own module, used at ``validate`` and again at run time: a dataset
is user input like the scenario that names it, and a bad line found only
after a server took minutes to start wastes that start. So every line is
checked up front, and each message names the file, the line, the field and
the value (``prompts.jsonl:3: output_tokens: must be a positive integer
(got -1)``). Lines carry ``prompt`` (a string) or ``messages`` (a list of
``{"role", "content"}`` strings), and optionally ``output_tokens``; other
keys (ids, sources) are kept out of the way, not refused.

A line may instead carry only lengths, ``{"prompt_tokens": 215, "output_tokens":
179}``: a recorded length distribution (a published dataset's, whose texts are
not ours to ship). Real runs build a synthetic prompt of that many tokens; the
sim's engine-mode what-if replays the pairs directly (``length_pairs``), so one
file drives both and a drain-style case sees the length tail, not its mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bounds import MAX_TOKENS
from harness.yamlfile import brief, shown


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message starts with ``FILE:LINE``."""


@dataclass(frozen=True)
class DatasetRow:
    """One checked line: exactly one of ``prompt`` / ``messages``, and its own output length if any."""

    lineno: int
    prompt: str | None
    messages: list[dict[str, str]] | None
    output_tokens: int | None
    # A length-only line: the prompt is synthetic, of this many tokens.
    prompt_tokens: int | None = None


def read_dataset(path: Path) -> list[DatasetRow]:
    """Every row of ``path``; ``DatasetError`` on the first bad byte, line or field."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such dataset file") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the dataset: {err.strerror}") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise DatasetError(f"{path}:{line}: not a text file (a NUL byte at offset {nul}): a binary file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8"
        ) from None
    rows = [check_row(path, lineno, line) for lineno, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DatasetError(
            f"{path}: the dataset is empty: one JSON object per line expected (got {len(raw)} bytes, no line)"
        )
    return rows


def check_row(path: Path, lineno: int, line: str) -> DatasetRow:
    """One line as a ``DatasetRow``, or a ``DatasetError`` naming its field and value."""
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where}: not valid JSON: {brief(err.msg)} at column {err.colno}") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: each line must be a JSON object (got {shown(row)})")
    prompt, messages = row.get("prompt"), row.get("messages")
    prompt_tokens = None
    if "prompt_tokens" in row:
        prompt_tokens = _positive(where, "prompt_tokens", row["prompt_tokens"])
        if "prompt" in row or "messages" in row:
            raise DatasetError(
                f"{where}: prompt_tokens: give either a text ('prompt'/'messages') or its length "
                f"'prompt_tokens', not both (got prompt_tokens {shown(prompt_tokens)})"
            )
        if "output_tokens" not in row:
            raise DatasetError(
                f"{where}: output_tokens: a length-only line (prompt_tokens {prompt_tokens}) needs its "
                f"output length too (got no output_tokens; keys {shown(sorted(row))})"
            )
    elif "messages" in row:
        messages = _messages(where, messages)
        prompt = None
    elif not isinstance(prompt, str) or not prompt.strip():
        got = shown(prompt) if "prompt" in row else f"no prompt; keys {shown(sorted(row))}"
        raise DatasetError(
            f"{where}: prompt: needs a non-empty string 'prompt' or a 'messages' list (got {got})"
        )
    out = _positive(where, "output_tokens", row["output_tokens"]) if "output_tokens" in row else None
    return DatasetRow(lineno, prompt, messages, out, prompt_tokens)


def _positive(where: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS:
        raise DatasetError(
            f"{where}: {key}: must be a positive integer up to {MAX_TOKENS} (got {shown(value)})"
        )
    return value


def length_pairs(path: Path, rows: list[DatasetRow]) -> list[tuple[int, int]]:
    """``(prompt_tokens, output_tokens)`` per row, for the engine-mode what-if.

    Every row must be length-only: a text's token count depends on a tokenizer
    the what-if does not load, and guessing it would hide the error the
    replayed distribution exists to remove.
    """
    pairs = []
    for r in rows:
        if r.prompt_tokens is None or r.output_tokens is None:
            raise DatasetError(
                f"{path}:{r.lineno}: prompt_tokens: the what-if replays lengths and needs "
                "'prompt_tokens' and 'output_tokens' on every line (this line has a text prompt)"
            )
        pairs.append((r.prompt_tokens, r.output_tokens))
    return pairs


def _messages(where: str, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: messages: must be a non-empty list of objects (got {shown(messages)})")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DatasetError(f"{where}: messages[{i}]: must be an object (got {shown(m)})")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise DatasetError(
                    f"{where}: messages[{i}].{key}: must be a string (got {shown(m.get(key))})"
                )
    return messages
