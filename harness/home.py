"""Where tokenbench keeps what it builds once and reuses: ``TOKENBENCH_HOME``.

Why one module: an installed ``tokenbench`` runs from any directory, so
caches cannot live "next to the checkout". Backend environments
(``HOME/venvs/NAME``) and generated models (``HOME/models/NAME``) go under
``TOKENBENCH_HOME``, default ``~/.cache/tokenbench``. The Makefile sets it to
the checkout's ``.cache``, so ``make`` targets find the environments built
there before. Runs are not cached: they go to ``./reports`` (``--out``).

Relative paths in a scenario that name files of the harness's own making
(``servers[].python``, a local ``model`` or ``tokenizer``) resolve against the
current directory first, then against the home (:func:`resolve_relative`):
``python: venvs/vllm-gpu/bin/python`` works from anywhere, and
``.cache/venvs/...`` still works from the checkout. ``workload.dataset``
and TLS bundles resolve against the scenario file's folder instead (they
travel with the scenario).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HOME_ENV = "TOKENBENCH_HOME"
DEFAULT_HOME = Path("~/.cache/tokenbench")


def tokenbench_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$TOKENBENCH_HOME`` (absolute), else ``~/.cache/tokenbench``; not created here."""
    env = os.environ if environ is None else environ
    given = env.get(HOME_ENV, "").strip()
    return Path(given).expanduser().absolute() if given else DEFAULT_HOME.expanduser().absolute()


def venvs_dir(home: Path) -> Path:
    """The folder of every backend environment (``tokenbench setup NAME`` → ``venvs/NAME``)."""
    return home / "venvs"


def models_dir(home: Path) -> Path:
    """The folder of generated tiny models (``local:tiny-llama`` → ``models/tiny-llama``)."""
    return home / "models"


def resolve_relative(given: str | Path, home: Path) -> Path:
    """A user-given path: as is when absolute, else the current directory's if it exists, else the home's.

    When neither exists the home's is returned, so a tokenbench environment
    named relative to the home (``venvs/vllm-gpu/bin/python``) is still
    recognised as one that ``tokenbench setup`` can build.
    """
    path = Path(given).expanduser()
    if path.is_absolute():
        return path
    if path.exists():
        return path.absolute()
    return home / path
