"""GPU and model profiles, loaded from package YAML: the sim's engine mode and the KV-fit estimate.

Why data files and pydantic: the figures come from public spec sheets and
model configs and will be added to by people who do not read the engine code;
validating them on load turns a typo into an error that names the file, the
profile and the field, instead of a silently wrong roofline. The parameter
count is also cross-checked against the architecture, so a wrong layer count
cannot hide behind a right ``params``.

Inside the harness these are plain frozen dataclasses (``GpuSpec``, ``ModelSpec``);
pydantic stays at the file edge. Product code (``harness/kvfit.py``) and the
simulator (``harness/sim``) both read them from here, so the sim never holds
data the harness needs and the harness never imports the sim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.hardware.errors import HardwareError

PROFILE_DIR = Path(__file__).resolve().parent / "data"
GPUS_FILE = PROFILE_DIR / "gpus.yaml"
MODELS_FILE = PROFILE_DIR / "models.yaml"
PARAMS_TOLERANCE = 0.03


class ProfileError(HardwareError):
    """A profile file or name that can't be used; the message names file/profile/field."""


@dataclass(frozen=True, slots=True)
class GpuSpec:
    key: str
    name: str
    memory_bytes: float
    bandwidth_bps: float
    bf16_flops: float
    fp8_flops: float | None
    # GPU-to-GPU link for tensor parallelism: "nvlink" or "pcie", per-direction bandwidth per GPU
    # and the fixed latency of one small all-reduce (harness/hardware/data/gpus.yaml says where from).
    interconnect: str = "pcie"
    interconnect_bps: float = 25e9
    allreduce_latency_s: float = 30e-6
    # Which calibration class (harness/hardware/data/calibration.yaml) holds its efficiencies.
    calibration_class: str = "uncalibrated"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    key: str
    match: tuple[str, ...]
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    params: int

    @property
    def embedding_params(self) -> int:
        """Embedding plus LM head (once when tied): left unquantized by AWQ/GPTQ."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuEntry(_Strict):
    name: str
    memory_gb: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float | None = Field(default=None, gt=0)
    interconnect: Literal["nvlink", "pcie"] = "pcie"
    interconnect_gbps: float = Field(default=25, gt=0)
    allreduce_latency_us: float = Field(default=30, ge=0)
    calibration_class: str = "uncalibrated"


class ModelEntry(_Strict):
    match: list[str] = Field(default_factory=list)
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = Field(gt=0)
    params: int = Field(gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        derived = derived_params(self)
        if abs(derived - self.params) > PARAMS_TOLERANCE * self.params:
            raise ValueError(
                f"params {self.params} disagrees with the architecture ({derived} derived from "
                f"layers/hidden_size/heads/...; tolerance {PARAMS_TOLERANCE:.0%})"
            )
        return self


def derived_params(m: ModelEntry | ModelSpec) -> int:
    """Parameters of a Llama-style decoder: attention, gated MLP, norms, embeddings."""
    q_out = m.heads * m.head_dim
    kv_out = m.kv_heads * m.head_dim
    attn = m.hidden_size * q_out + 2 * m.hidden_size * kv_out + q_out * m.hidden_size
    mlp = 3 * m.hidden_size * m.intermediate_size
    per_layer = attn + mlp + 2 * m.hidden_size
    embed = m.vocab_size * m.hidden_size * (1 if m.tie_word_embeddings else 2)
    return m.layers * per_layer + embed + m.hidden_size


def _read(path: Path, top: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ProfileError(f"{path}: cannot read profiles: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get(top), dict) or not data[top]:
        raise ProfileError(f"{path}: expected a top-level '{top}:' mapping of profiles")
    return data[top]


def _errors(path: Path, key: str, err: ValidationError) -> ProfileError:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(profile)"
        parts.append(f"{path}: {key}.{loc}: {e['msg']} (got {e.get('input')!r})")
    return ProfileError("\n".join(parts))


def load_gpus(path: Path = GPUS_FILE) -> dict[str, GpuSpec]:
    """All GPU profiles by key; raises ``ProfileError`` naming file, profile and field."""
    out: dict[str, GpuSpec] = {}
    for key, raw in _read(path, "gpus").items():
        try:
            e = GpuEntry.model_validate(raw)
        except ValidationError as err:
            raise _errors(path, str(key), err) from None
        out[str(key)] = GpuSpec(
            key=str(key),
            name=e.name,
            memory_bytes=e.memory_gb * 1e9,
            bandwidth_bps=e.bandwidth_gbps * 1e9,
            bf16_flops=e.bf16_tflops * 1e12,
            fp8_flops=e.fp8_tflops * 1e12 if e.fp8_tflops is not None else None,
            interconnect=e.interconnect,
            interconnect_bps=e.interconnect_gbps * 1e9,
            allreduce_latency_s=e.allreduce_latency_us * 1e-6,
            calibration_class=e.calibration_class,
        )
    return out


def load_models(path: Path = MODELS_FILE) -> dict[str, ModelSpec]:
    """All model profiles by key; raises ``ProfileError`` naming file, profile and field."""
    out: dict[str, ModelSpec] = {}
    for key, raw in _read(path, "models").items():
        try:
            e = ModelEntry.model_validate(raw)
        except ValidationError as err:
            raise _errors(path, str(key), err) from None
        fields = e.model_dump()
        fields["match"] = tuple(s.lower() for s in e.match)
        out[str(key)] = ModelSpec(key=str(key), **fields)
    return out


def get_gpu(key: str) -> GpuSpec:
    gpus = load_gpus()
    if key not in gpus:
        raise ProfileError(f"gpu {key!r}: unknown GPU profile; known: {', '.join(gpus)}")
    return gpus[key]


def resolve_gpu(name: str) -> str:
    """A GPU profile key from its key or a unique prefix (``a10g`` -> ``a10g-24gb``); ``ValueError``
    listing the known ones otherwise."""
    gpus = load_gpus()
    if name in gpus:
        return name
    matches = [key for key in gpus if key.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    how = "matches several" if matches else "is not a GPU profile"
    raise ValueError(f"{name!r} {how}; known: {', '.join(gpus)} (harness/hardware/data/gpus.yaml)")


def get_model(key: str) -> ModelSpec:
    models = load_models()
    if key not in models:
        raise ProfileError(f"model profile {key!r}: unknown; known: {', '.join(models)}")
    return models[key]


def match_model(served_name: str) -> str | None:
    """The profile key whose ``match`` substrings occur in a served model id, else None."""
    low = served_name.lower()
    for key, spec in load_models().items():
        if low == key or any(s in low for s in spec.match):
            return key
    return None
