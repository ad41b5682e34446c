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
