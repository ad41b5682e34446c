"""Compile the C truth server (``truthserver.c``) once per source version into ``TOKENBENCH_HOME/bin``.

Why a build step at all: the Python truth server costs 15-24 µs of CPU per
token on a slow 2-core machine, so at 1,024 streams × ITL 10 ms it needs more
than a core and falls behind its own schedule; the same server in C costs
about half (issue 11 §2 allows "anything that keeps pace"). gcc is on every
machine the benchmark runs on (CI included), so the source ships in the
package and is compiled on first use. The binary's name carries the source's
hash, so an edited source is never served by a stale binary and an unchanged
one is never rebuilt; it is compiled under a temporary name and renamed, so a
concurrent or interrupted build never leaves a half-written binary behind.
A failed build raises :class:`CBuildError` naming the command and the
compiler's output: ``--truth c`` never falls back to another server silently.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path

from harness.home import tokenbench_home

SOURCE = Path(__file__).with_name("truthserver.c")
CC_ENV = "TOKENBENCH_CC"  # the compiler to use (default gcc)
CFLAGS = ("-O2", "-Wall", "-Wextra")
BUILD_TIMEOUT_S = 120.0


class CBuildError(RuntimeError):
    """The C truth server could not be compiled; the message names the command and its output."""


def source_files(source: Path = SOURCE) -> list[Path]:
    """The server's files: ``source`` and the headers beside it (its parts, ``#include``d into it)."""
    return [source, *sorted(source.parent.glob("*.h"))]


def binary_path(home: Path, source: Path = SOURCE) -> Path:
    """Where the binary for this exact source lives: ``HOME/bin/tokenbench-truthserver-<sha256[:12]>``.

    The hash covers every file of the server (names and bytes), so editing a header rebuilds too.
    """
    h = hashlib.sha256()
    for path in source_files(source):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return home / "bin" / f"tokenbench-truthserver-{h.hexdigest()[:12]}"


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # its folder is not there or not a folder: nothing was left behind


def truthserver_binary(home: Path | None = None, cc: str | None = None, source: Path = SOURCE) -> Path:
    """The compiled C truth server for ``source``, built now unless a binary of that source exists."""
    out = binary_path(home or tokenbench_home(), source)
    if out.is_file() and os.access(out, os.X_OK):
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [cc or os.environ.get(CC_ENV) or "gcc", *CFLAGS, "-o", str(tmp), str(source), "-lm"]
    where = f"cannot build the C truth server: `{shlex.join(cmd)}`"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        _discard(tmp)
        raise CBuildError(f"{where}: {err} (install gcc, or set {CC_ENV}; or use --truth lean)") from None
    if done.returncode != 0 or not tmp.is_file():
        _discard(tmp)
        raise CBuildError(f"{where} exited {done.returncode}:\n{done.stderr.strip()}")
    try:
        os.replace(tmp, out)
    except OSError as err:
        _discard(tmp)
        raise CBuildError(f"{where}: cannot install it as {out}: {err}") from None
    return out
