"""Compiling the harness's few C parts on first use, cached under ``TOKENBENCH_HOME/bin``.

Why C at all: two measuring paths must keep pace with ~100k chunks/s on two
slow cores, where Python's per-call cost is the limit: the fidelity
benchmark's truth server (``harness.fidelity.truthserver.c``) and the load
client's native stream reader (``harness.load.nativeread.c``). Why built here
rather than at install: the package stays a pure-Python install; gcc is on
every machine this project targets (CI included), and where it is missing the
reader falls back to the Python path and says so, while ``--truth c`` fails
with this module's error.

The output's name carries a hash of every file of the part (the source and
the headers beside it) and of the flags, so an edited source is never served
by a stale build and an unchanged one is never rebuilt. It is compiled under a
temporary name and renamed, so a concurrent build (two Locust processes
starting together) or an interrupted one never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.home import tokenbench_home

CC_ENV = "TOKENBENCH_CC"  # the compiler to use (default gcc)
WARNINGS = ("-O2", "-Wall", "-Wextra")
SHARED = ("-shared", "-fPIC", "-pthread")
BUILD_TIMEOUT_S = 120.0


class CBuildError(RuntimeError):
    """A C part could not be compiled; the message names the command and the compiler's output."""


def source_files(source: Path) -> list[Path]:
    """A part's files: ``source`` and the headers beside it (its pieces, ``#include``d into it)."""
    return [source, *sorted(source.parent.glob("*.h"))]


def output_path(home: Path, source: Path, stem: str, flags: Sequence[str], suffix: str = "") -> Path:
    """``HOME/bin/<stem>-<sha256[:12]>[suffix]``, the hash over the part's files (names, bytes) and flags."""
    h = hashlib.sha256(" ".join(flags).encode() + b"\0")
    for path in source_files(source):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return home / "bin" / f"{stem}-{h.hexdigest()[:12]}{suffix}"


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # its folder is not there or not a folder: nothing was left behind


def build(
    source: Path,
    stem: str,
    *,
    flags: Sequence[str] = WARNINGS,
    libs: Sequence[str] = (),
    suffix: str = "",
    home: Path | None = None,
    cc: str | None = None,
    hint: str = "install gcc, or set " + CC_ENV,
    what: str = "",
) -> Path:
    """The compiled ``source`` (built now unless a build of exactly these files and flags exists)."""
    out = output_path(home or tokenbench_home(), source, stem, flags, suffix)
    if out.is_file() and os.access(out, os.R_OK):
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [cc or os.environ.get(CC_ENV) or "gcc", *flags, "-o", str(tmp), str(source), *libs]
    where = f"cannot build {what or source.name}: `{shlex.join(cmd)}`"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        _discard(tmp)
        raise CBuildError(f"{where}: {err} ({hint})") from None
    if done.returncode != 0 or not tmp.is_file():
        _discard(tmp)
        raise CBuildError(f"{where} exited {done.returncode}:\n{done.stderr.strip()[-4000:]}")
    try:
        os.replace(tmp, out)
    except OSError as err:
        _discard(tmp)
        raise CBuildError(f"{where}: cannot install it as {out}: {err}") from None
    return out


def build_shared(source: Path, stem: str, home: Path | None = None, cc: str | None = None) -> Path:
    """A shared library for ``ctypes`` (``-shared -fPIC -pthread``)."""
    return build(source, stem, flags=(*WARNINGS, *SHARED), suffix=".so", home=home, cc=cc, what=source.name)
