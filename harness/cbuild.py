"""Compiling the harness's few C parts on first use, cached under ``TOKENBENCH_HOME/bin``.

Why C at all, and why built here rather than at install: the measuring
paths that must keep pace with 100k chunks/s on two slow cores (the native
stream reader, ``harness.load.nativeread``) cannot afford Python's per-call
cost, while the package must stay a pure-Python install that works where no
compiler is (the reader then falls back to the Python path, and says so). gcc
is on every machine this project targets, CI included.

The output's name carries a hash of the source and the flags, so a changed
source is rebuilt and two checkouts never load each other's build; it is
written under a temporary name and renamed, so a concurrent build (two Locust
processes starting together) never loads half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.home import tokenbench_home

COMPILER_ENV = "TOKENBENCH_CC"
SHARED_FLAGS = ("-O2", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra")
BUILD_TIMEOUT_S = 120


class CBuildError(RuntimeError):
    """The C source could not be compiled; the message names the command and the compiler's output."""


def bin_dir(home: Path | None = None) -> Path:
    return (home or tokenbench_home()) / "bin"


def compiler() -> str | None:
    """``$TOKENBENCH_CC``, else ``cc``/``gcc`` on PATH; None if there is none."""
    given = os.environ.get(COMPILER_ENV, "").strip()
    if given:
        return given
    return shutil.which("cc") or shutil.which("gcc")


def build_shared(source: Path, stem: str, home: Path | None = None, cc: str | None = None) -> Path:
    """The shared library built from ``source`` (built now if no build of this source exists yet)."""
    cc = cc or compiler()
    if cc is None:
        raise CBuildError(f"no C compiler to build {source.name} (set {COMPILER_ENV} or install gcc)")
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join(SHARED_FLAGS).encode()).hexdigest()[:12]
    out = bin_dir(home) / f"{stem}-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, *SHARED_FLAGS, "-o", tmp, str(source)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        os.unlink(tmp)
        raise CBuildError(f"{' '.join(cmd)}: {err}") from None
    if proc.returncode != 0:
        os.unlink(tmp)
        raise CBuildError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp, out)
    return out
