"""The sim's view of the GPU and model profiles, which live in ``harness.hardware.profiles``.

Why a re-export: the profiles and the sizing arithmetic moved to the harness (the KV-fit
estimate at ``validate`` needs them, and product code may not import the sim); the sim's
own modules and tests keep importing them by their old name.
"""

from __future__ import annotations

from harness.hardware.profiles import (
    GPUS_FILE,
    MODELS_FILE,
    PARAMS_TOLERANCE,
    PROFILE_DIR,
    GpuEntry,
    GpuSpec,
    ModelEntry,
    ModelSpec,
    ProfileError,
    derived_params,
    get_gpu,
    get_model,
    load_gpus,
    load_models,
    match_model,
)

__all__ = [
    "GPUS_FILE",
    "MODELS_FILE",
    "PARAMS_TOLERANCE",
    "PROFILE_DIR",
    "GpuEntry",
    "GpuSpec",
    "ModelEntry",
    "ModelSpec",
    "ProfileError",
    "derived_params",
    "get_gpu",
    "get_model",
    "load_gpus",
    "load_models",
    "match_model",
]
