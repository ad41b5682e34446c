"""Keeping secrets out of everything the harness writes.

Why one module: commands, environment variables and env.json all pass
through different writers (summary.json, report.html, baselines), and a secret
that one of them forgets is a secret published in a CI artefact. Names are
matched as whole words (``HF_TOKEN``, ``--api-key``) so that settings such as
``max_num_batched_tokens`` are not mistaken for secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "REDACTED"  # shell-safe: commands are shown with shlex.join
_SECRET_WORD = re.compile(
    r"(^|[_.-])(token|key|secret|password|passwd|credentials?|auth|authorization|bearer)($|[_.-])",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """True for names like ``HF_TOKEN``, ``api_key``, ``--hf-token``; false for ``max_num_batched_tokens``."""
    return bool(_SECRET_WORD.search(str(name).lstrip("-")))


def redact_command(argv: list[str]) -> list[str]:
    """The command with the values of secret-named flags (``--api-key X``, ``--api-key=X``) replaced."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif arg.startswith("-") and "=" in arg and is_secret_name(arg.split("=", 1)[0]):
            out.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        elif arg.startswith("-") and is_secret_name(arg):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out


def redact_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with the values of secret-named keys replaced (one level; nested mappings recurse)."""
    return {
        k: REDACTED if is_secret_name(k) else (redact_mapping(v) if isinstance(v, Mapping) else v)
        for k, v in data.items()
    }


# --- by value: secrets the harness knows, and the shapes secrets come in ----------------------

MIN_SECRET_CHARS = 4  # shorter "secrets" (a test's "x") would blank out ordinary text
_SECRET_SHAPES = (
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{4,}"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[A-Za-z0-9+/=]{4,}"),
    re.compile(r"()\bhf_[A-Za-z0-9]{8,}"),
    re.compile(r"()\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"),  # userinfo in a URL
)


def scrub_text(text: str, known: frozenset[str] = frozenset(), *, cut: bool = False) -> str:
    """``text`` with every known secret value and every secret-shaped token replaced by ``REDACTED``.

    Why by value: a server may echo the Authorization header into a 401 body or
    an SSE event, and that body becomes a record's ``error_message``; no name
    is attached to it there. Known values are replaced longest first, so a
    secret that contains another is removed whole.

    ``cut``: the text may have been cut at a length bound (a record's error
    body), so the start of a known value at its very end goes too. Not for
    names and ids, where a word that starts a secret may end a name.
    """
    for value in sorted(known, key=len, reverse=True):
        if len(value) >= MIN_SECRET_CHARS and value in text:
            text = text.replace(value, REDACTED)
    if cut:
        text = _cut_secret_at_end(text, known)
    for shape in _SECRET_SHAPES:
        text = shape.sub(
            lambda m: f"{m.group(1)}{REDACTED}" + ("@" if m.group(0).endswith("@") else ""), text
        )
    return text


_CLOSERS = "'\")]}>. \n"


def _cut_secret_at_end(text: str, known: frozenset[str]) -> str:
    """A known value cut short by a length bound (``body[:500]``) leaves its start at the end of
    the text, perhaps before a closing quote: that start goes too."""
    core = text.rstrip(_CLOSERS)
    last = core[-MIN_SECRET_CHARS:]
    if len(last) < MIN_SECRET_CHARS:
        return text
    for value in sorted(known, key=len, reverse=True):
        # A start of ``value`` that ends ``core`` ends with ``last``: try only where ``last`` occurs.
        ends = [i + MIN_SECRET_CHARS for i in range(len(value)) if value.startswith(last, i)]
        for k in sorted(ends, reverse=True):
            if k < len(value) and core.endswith(value[:k]):
                return core[:-k] + REDACTED + text[len(core) :]
    return text


def scrub(data: Any, known: frozenset[str] = frozenset()) -> Any:
    """:func:`scrub_text` applied to every string in nested dicts/lists (keys included)."""
    if isinstance(data, str):
        return scrub_text(data, known)
    if isinstance(data, Mapping):
        return {scrub_text(str(k), known): scrub(v, known) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrub(v, known) for v in data]
    return data


def secret_values_in_args(argv: list[str]) -> set[str]:
    """Values that :func:`redact_command` would hide, so they can be scrubbed elsewhere too."""
    found: set[str] = set()
    for arg, nxt in zip(argv, [*argv[1:], ""][: len(argv)], strict=True):
        if arg.startswith("-") and "=" in arg and is_secret_name(arg.split("=", 1)[0]):
            found.add(arg.split("=", 1)[1])
        elif arg.startswith("-") and is_secret_name(arg) and nxt:
            found.add(nxt)
    return found
