"""Reading a user's YAML file with errors that name the file.

Scenarios, gate policies and stored run scenarios are all read this way; each
caller raises its own error type so the CLI maps it to the right exit code.

Why more than ``yaml.safe_load``: a user's file is untrusted input that runs
before anything else, so it must fail fast and briefly, never with a traceback:

* binary or non-UTF-8 files are refused with the byte offset, not a
  ``UnicodeDecodeError``;
* a document is bounded in bytes and in *expanded* size: YAML aliases let
  1.3 KB stand for millions of values (an "alias bomb"), which once cost
  3 GB and a 480 MB error message. The expansion is counted with an early
  exit, so the check costs at most ``MAX_VALUES`` steps;
* aliases are then copied apart: ``settings: *engine`` on two servers yields
  two independent mappings, so ``--set servers.0.settings.x=...`` changes one
  server, not both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 8 * 2**20
MAX_VALUES = 200_000


def read_yaml(path: Path, error: type[Exception], what: str) -> Any:
    """The parsed document; ``error("<path>: no such <what>")`` or ``error("<path>: not valid YAML: ...")``."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot read the {what}: {err.strerror}") from None
    return parse_yaml(raw, str(path), error, what)


def parse_yaml(raw: bytes | str, source: str, error: type[Exception], what: str = "document") -> Any:
    """Parse ``raw`` with the same checks as :func:`read_yaml`; errors start with ``source``."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_BYTES:
            raise error(f"{source}: the {what} is {len(raw)} bytes; more than {MAX_BYTES} is refused")
        nul = raw.find(b"\0")
        if nul >= 0:
            raise error(f"{source}: not UTF-8 text (a NUL byte at offset {nul}: a binary file?)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(
                f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                "save the file as UTF-8"
            ) from None
    else:
        text = raw
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{source}: not valid YAML: {brief(str(err))}") from None
    if expanded_size(data, MAX_VALUES) > MAX_VALUES:
        raise error(
            f"{source}: the {what} expands to more than {MAX_VALUES} values "
            "(YAML aliases repeating large anchors?); refused"
        )
    return unshare(data)


def expanded_size(data: Any, limit: int) -> int:
    """How many values ``data`` holds with every alias expanded, counting stops just past ``limit``."""
    count = 0
    stack = [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def unshare(data: Any) -> Any:
    """A copy in which no mapping or list appears twice (what YAML aliases produce)."""
    if isinstance(data, dict):
        return {k: unshare(v) for k, v in data.items()}
    if isinstance(data, list):
        return [unshare(v) for v in data]
    return data


def brief(message: str, limit: int = 600) -> str:
    """``message`` cut to ``limit`` characters (parser messages quote the document)."""
    return message if len(message) <= limit else message[:limit] + " …"


SHOWN_CHARS = 200


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: never echo a whole document."""
    if isinstance(value, dict):
        return "{...}"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
