"""``vllm-gpu``: vLLM for NVIDIA GPUs, the plain ``vllm`` wheel from PyPI (CUDA torch included).

Why a pinned version: a benchmark must name what it measured; bump it
deliberately (``servers/vllm-gpu/requirements.txt`` says the same).
"""

from __future__ import annotations

from pathlib import Path

from harness.envs.base import Environment, Installer, pip
from harness.envs.vllm_choices import choices_missing, record_vllm_choices

VLLM_GPU_VERSION = "0.32.0"


class VllmGpuEnv(Environment):
    name = "vllm-gpu"
    summary = f"vllm {VLLM_GPU_VERSION} with CUDA torch from PyPI; several GB, minutes"
    import_check = "import vllm, torch; print(torch.__version__, torch.cuda.is_available())"

    def recipe_id(self) -> str:
        return f"vllm=={VLLM_GPU_VERSION}"

    def install(self, python: Path, inst: Installer) -> None:
        inst.run(f"install vllm=={VLLM_GPU_VERSION}", pip(python, "install", f"vllm=={VLLM_GPU_VERSION}"))

    def finish(self, python: Path, inst: Installer) -> None:
        record_vllm_choices(python, inst)

    def extras_missing(self, env_dir: Path) -> bool:
        return choices_missing(env_dir)
