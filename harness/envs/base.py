"""One backend environment: a venv under ``TOKENBENCH_HOME/venvs/NAME``, built by a recipe, trusted only when complete.

Why a base class: every backend server runs from its own interpreter (vLLM,
TGIS and Caikit pin torch, transformers, protobuf and pydantic to versions
that fight the harness's and each other's), and every such environment needs
the same bookkeeping: build it once, log each step, wipe a half-built one,
and write a completion marker *last*, only after an import check passed, so
an interrupted install is redone rather than trusted. A subclass gives only
its recipe (:meth:`Environment.install`), its import check and its marker.

Commands run through an :class:`Installer`, so a test can replace pip with a
fake and check idempotence without the network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness.home import venvs_dir

MARKER_NAME = ".tokenbench-complete.json"
INSTALL_HEADROOM_GB = 1.0  # beside the envs themselves: pip's temporary files and download cache

Progress = Callable[[str], None]


class BackendEnvError(RuntimeError):
    """Creating a backend environment failed; the message says which environment, which step and why."""


def venv_dir(home: Path, name: str) -> Path:
    """``HOME/venvs/NAME`` (``harness.home``: ``TOKENBENCH_HOME``)."""
    return venvs_dir(home) / name


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def python_tag() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass
class Installer:
    """Runs an environment's install steps, appending their output to one log file."""

    env_name: str
    log_path: Path
    progress: Progress

    def run(self, step: str, cmd: list[str]) -> None:
        """Run one step; :class:`BackendEnvError` with the log's tail when it fails."""
        self.progress(f"[{self.env_name}] {step}: {' '.join(cmd)}")
        started = time.monotonic()
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"\n### {step}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            raise BackendEnvError(
                f"{self.env_name} env: step '{step}' failed with exit code {proc.returncode}; "
                f"full log: {self.log_path}\n" + "\n".join(tail)
            )
        self.progress(f"[{self.env_name}] {step}: done in {time.monotonic() - started:.0f}s")

    def output(self, step: str, cmd: list[str]) -> str:
        """Run a short query and return its stdout (stderr goes to the log)."""
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"\n### {step}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
        if proc.returncode != 0:
            raise BackendEnvError(f"{self.env_name} env: step '{step}' failed (exit {proc.returncode})")
        return proc.stdout.strip()


InstallerFactory = Callable[[str, Path, Progress], Installer]


class Environment:
    """A backend environment. Subclass: set ``name``, ``summary``, ``import_check``; write ``install``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # Python run in the finished env; the env counts as complete only if it exits 0.
    import_check: ClassVar[str]
    # What the finished env takes on disk (GB, ``du -s`` on a 2-core VM); None: not measured, not checked.
    disk_gb: ClassVar[float | None] = None

    def marker_payload(self) -> dict[str, str]:
        """What the completion marker says; a different payload (another recipe) means rebuild."""
        return {"env": self.name, "recipe": self.recipe_id(), "python": python_tag()}

    def recipe_id(self) -> str:
        """A short name of the recipe's pinned versions (change it when the recipe changes)."""
        raise NotImplementedError

    def install(self, python: Path, inst: Installer) -> None:
        """The recipe, run in a fresh venv whose pip is already upgraded."""
        raise NotImplementedError

    def finish(self, python: Path, inst: Installer) -> None:
        """Files written beside the marker after the import check (e.g. recorded choices).

        Also run on a complete env whose extra files are missing (:meth:`extras_missing`), so an
        env built by an older tokenbench gains them without a rebuild.
        """

    def extras_missing(self, env_dir: Path) -> bool:
        return False

    # -- the bookkeeping ------------------------------------------------------------------------
    def dir(self, home: Path) -> Path:
        return venv_dir(home, self.name)

    def python(self, home: Path) -> Path:
        return venv_python(self.dir(home))

    def is_complete(self, home: Path) -> bool:
        """True only if a previous install of this exact recipe ran to the end."""
        env_dir = self.dir(home)
        marker = env_dir / MARKER_NAME
        if not marker.is_file() or not venv_python(env_dir).exists():
            return False
        try:
            return bool(json.loads(marker.read_text(encoding="utf-8")) == self.marker_payload())
        except (OSError, ValueError):
            return False

    def ensure(
        self,
        home: Path,
        progress: Progress = print,
        *,
        force: bool = False,
        installer: InstallerFactory = Installer,
    ) -> Path:
        """Build the env if needed and return its interpreter.

        Idempotent: a complete env is returned untouched in milliseconds; a half-built one is wiped
        and rebuilt; the marker is written only after the import check passed.
        """
        env_dir = self.dir(home)
        python = venv_python(env_dir)
        log_path = env_dir.parent / f"{self.name}-install.log"
        if not force and self.is_complete(home):
            if self.extras_missing(env_dir):
                self.finish(python, installer(self.name, log_path, progress))
            progress(f"[{self.name}] env ready: {env_dir}")
            return python
        if env_dir.exists():
            progress(f"[{self.name}] removing incomplete env at {env_dir}")
            shutil.rmtree(env_dir)
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("", encoding="utf-8")
        progress(f"[{self.name}] creating env at {env_dir} ({self.summary}); log: {log_path}")
        started = time.monotonic()
        inst = installer(self.name, log_path, progress)
        base_python = getattr(sys, "_base_executable", sys.executable)
        inst.run("create venv", [base_python, "-m", "venv", str(env_dir)])
        inst.run("upgrade pip", pip(python, "install", "-q", "--upgrade", "pip"))
        self.install(python, inst)
        inst.run("import check", [str(python), "-c", self.import_check])
        self.finish(python, inst)
        (env_dir / MARKER_NAME).write_text(json.dumps(self.marker_payload()), encoding="utf-8")
        progress(f"[{self.name}] env ready in {time.monotonic() - started:.0f}s: {env_dir}")
        return python


def check_disk(envs: Sequence[Environment], home: Path) -> None:
    """Refuse before anything is installed when the environments to build cannot fit on the disk.

    Why: the environments are GBs (TGIS alone 7.6 GB), and a pip that runs out
    of space stops minutes in, deep in an unpack, with ``[Errno 28] No space
    left on device`` and a half-built env that is then wiped. Saying so at once,
    with the sizes and the place, lets the user free space or move
    ``TOKENBENCH_HOME``. Only the envs with a measured size count.
    """
    sized = [(env.name, env.disk_gb) for env in envs if env.disk_gb]
    if not sized:
        return
    where = venvs_dir(home)
    probe = next(p for p in (where, *where.parents) if p.exists())
    free_gb = shutil.disk_usage(probe).free / 1e9
    need_gb = sum(gb for _, gb in sized) + INSTALL_HEADROOM_GB
    if free_gb < need_gb:
        sizes = ", ".join(f"{name} ~{gb:g} GB" for name, gb in sized)
        raise BackendEnvError(
            f"not enough disk for the backend environments at {where}: {sizes}, plus "
            f"{INSTALL_HEADROOM_GB:g} GB for pip, need ~{need_gb:.1f} GB and {free_gb:.1f} GB is free; "
            "free some space, or set TOKENBENCH_HOME to a larger disk"
        )


def pip(python: Path, *args: str) -> list[str]:
    """``python -m pip ARGS``; an ``install`` skips byte-compiling what it installs (``--no-compile``).

    Why: compiling every module of torch, vLLM and their dependencies was about
    70 % of an install's time (torch 2.13: 44 s with, 13 s without, on a 2-core
    VM), and a server imports a small part of them. Python compiles what is
    imported on first import and caches it in the env, which the recipe's
    import check does at once.
    """
    if args[:1] == ("install",):
        args = ("install", "--no-compile", *args[1:])
    return [str(python), "-m", "pip", *args]


def site_packages(python: Path, inst: Installer) -> Path:
    return Path(
        inst.output(
            "find site-packages",
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        )
    )
