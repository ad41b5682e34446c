"""A user's prompt dataset (JSONL): read and checked whole, line by line.

Why its own module, used at ``validate`` and again at run time: a dataset
is user input like the scenario that names it, and a bad line found only
after a server took minutes to start wastes that start. So every line is
checked up front, and each message names the file, the line, the field and
the value (``prompts.jsonl:3: output_tokens: must be a positive integer
(got -1)``). Lines carry ``prompt`` (a string) or ``messages`` (a list of
``{"role", "content"}`` strings), and optionally ``output_tokens``; other
keys (ids, sources) are kept out of the way, not refused.
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
    if "messages" in row:
        messages = _messages(where, messages)
        prompt = None
    elif not isinstance(prompt, str) or not prompt.strip():
        got = shown(prompt) if "prompt" in row else f"no prompt; keys {shown(sorted(row))}"
        raise DatasetError(
            f"{where}: prompt: needs a non-empty string 'prompt' or a 'messages' list (got {got})"
        )
    out = row.get("output_tokens")
    if "output_tokens" in row and (
        not isinstance(out, int) or isinstance(out, bool) or not 1 <= out <= MAX_TOKENS
    ):
        raise DatasetError(
            f"{where}: output_tokens: must be a positive integer up to {MAX_TOKENS} (got {shown(out)})"
        )
    return DatasetRow(lineno, prompt, messages, out)


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
