"""The C truth server (``truthserver.c``), compiled once per source version into ``TOKENBENCH_HOME/bin``.

Why a build step at all: the Python truth server costs 15-24 µs of CPU per
token on a slow 2-core machine, so at 1,024 streams × ITL 10 ms it needs more
than a core and falls behind its own schedule; the same server in C costs
about half (issue 11 §2 allows "anything that keeps pace"). The compile and
its cache are ``harness.cbuild``'s; a failed build raises its
:class:`CBuildError` naming the command and the compiler's output: ``--truth
c`` never falls back to another server silently.
"""

from __future__ import annotations

from pathlib import Path

from harness import cbuild
from harness.cbuild import CC_ENV, WARNINGS, CBuildError, build, output_path
from harness.home import tokenbench_home

SOURCE = Path(__file__).with_name("truthserver.c")
STEM = "tokenbench-truthserver"
CFLAGS = WARNINGS
LIBS = ("-lm",)

__all__ = ["CC_ENV", "CBuildError", "binary_path", "source_files", "truthserver_binary"]


def source_files(source: Path = SOURCE) -> list[Path]:
    """The server's files: ``source`` and the headers beside it (its parts, ``#include``d into it)."""
    return cbuild.source_files(source)


def binary_path(home: Path, source: Path = SOURCE) -> Path:
    """Where the binary for this exact source lives: ``HOME/bin/tokenbench-truthserver-<hash>``."""
    return output_path(home, source, STEM, CFLAGS)


def truthserver_binary(home: Path | None = None, cc: str | None = None, source: Path = SOURCE) -> Path:
    """The compiled C truth server for ``source``, built now unless a binary of that source exists."""
    return build(
        source,
        STEM,
        flags=CFLAGS,
        libs=LIBS,
        home=home or tokenbench_home(),
        cc=cc,
        hint=f"install gcc, or set {CC_ENV}; or use --truth lean",
        what="the C truth server",
    )
