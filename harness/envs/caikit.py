"""``caikit``: the Caikit runtime with caikit-nlp, forwarding text generation to a TGIS server.

Why the "light" recipe (``shared/reference/openshift-ai-stack``): caikit-nlp
0.5.15 declares ``torch<2.9``, which on PyPI means the 7.2 GB CUDA torch 2.8;
the runtime only forwards to TGIS, and caikit-nlp was found to work on the
machine's torch 2.13.0 (+cpu where the local wheel store has it) in both
modes, so it goes in with ``--no-deps`` and its dependencies are listed here.
``pyarrow==21.0.0`` because pip otherwise picks a pyarrow that refuses
NumPy 1.26. About 1.7 GB; about 1.5 minutes.
"""

from __future__ import annotations

from pathlib import Path

from harness.envs.base import Environment, Installer, pip

CAIKIT_NLP = "caikit-nlp==0.5.15"
TORCH = "torch==2.13.0"
DEPENDENCIES = (
    "caikit[runtime-grpc,runtime-http]==0.28.3", "caikit-tgis-backend==0.1.39", "grpcio-reflection",
    "grpcio-health-checking", "accelerate", "datasets", "huggingface-hub", "numpy<2", "pandas",
    "scikit-learn", "scipy", "sentence-transformers<3.5", "tokenizers", "tqdm", "transformers<4.50",
    "peft==0.14.0", "pyarrow==21.0.0", TORCH,
)  # fmt: skip


class CaikitEnv(Environment):
    name = "caikit"
    summary = f"{CAIKIT_NLP} + caikit 0.28.3 + caikit-tgis-backend on {TORCH}; ~1.7 GB"
    disk_gb = 1.4
    import_check = (
        "import caikit, caikit_nlp, caikit_tgis_backend, torch; "
        "from caikit_nlp.modules.text_generation.text_generation_tgis import TextGenerationTGIS; "
        "import caikit.runtime.grpc_server, caikit.runtime.http_server; print(torch.__version__)"
    )

    def recipe_id(self) -> str:
        return f"{CAIKIT_NLP}+caikit==0.28.3+{TORCH}"

    def install(self, python: Path, inst: Installer) -> None:
        inst.run(f"install {TORCH}", pip(python, "install", TORCH))
        inst.run(
            f"install {CAIKIT_NLP} (no deps: it pins torch<2.9)",
            pip(python, "install", "--no-deps", CAIKIT_NLP),
        )
        inst.run("install the runtime and caikit-nlp's dependencies", pip(python, "install", *DEPENDENCIES))
