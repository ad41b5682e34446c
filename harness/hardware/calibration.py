"""What an engine achieves of a GPU's peaks, the published results that say so, and the error band.

Why a data file and not constants in the roofline: a what-if that users size
hardware on must say where every factor came from. ``calibration.yaml`` holds,
per GPU class, the achieved fraction of peak bandwidth and FLOPs (prefill and
decode apart), the per-step overhead (a fixed part plus a per-sequence part:
scheduling, sampling, detokenization) and the dequantization cost of
weight-only kernels, each with the published result it was fitted to. The
same file lists the published cases, split into ``fit`` and ``heldout``;
``python -m harness.sim.whatif`` reruns them all and writes the band each
regime earned to ``bands.yaml``, which the report reads (product code never
runs the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.hardware.errors import HardwareError
from harness.hardware.profiles import PROFILE_DIR

CALIBRATION_FILE = PROFILE_DIR / "calibration.yaml"
BANDS_FILE = PROFILE_DIR / "bands.yaml"
UNCALIBRATED = "uncalibrated"
REGIMES = ("decode", "throughput", "tp")


class CalibrationError(HardwareError):
    """The calibration file can't be used; the message names the file, entry and field."""


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achieved fractions of peak and per-step overheads for one GPU class."""

    klass: str
    decode_bw: float
    prefill_bw: float
    decode_flops: float
    prefill_flops: float
    step_fixed_s: float
    step_per_seq_s: float
    # Extra compute of weight-only kernels, as a fraction of the bf16 GEMM time of the linear layers.
    dequant: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Case:
    """One published result and the conditions to rerun it."""

    key: str
    role: Literal["fit", "heldout"]
    regime: str
    gpu: str
    model: str
    metric: str
    published: float
    unit: str
    source: str
    conditions: str
    setup: dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Source(_Strict):
    url: str
    note: str


class _Class(_Strict):
    calibrated: bool
    decode_bw_eff: float = Field(gt=0, le=1)
    prefill_bw_eff: float = Field(gt=0, le=1)
    decode_flops_eff: float = Field(gt=0, le=1)
    prefill_flops_eff: float = Field(gt=0, le=1)
    step_fixed_ms: float = Field(ge=0)
    step_per_seq_ms: float = Field(ge=0)
    dequant: dict[str, float] = Field(default_factory=dict)
    sources: list[_Source] = Field(default_factory=list)


class _Case(_Strict):
    role: Literal["fit", "heldout"]
    regime: Literal["decode", "throughput", "tp"]
    gpu: str
    model: str
    metric: Literal["e2e_ms", "tpot_ms", "output_tok_s", "throughput_ratio"]
    published: float = Field(gt=0)
    unit: str
    source: str
    conditions: str
    setup: dict[str, Any] = Field(default_factory=dict)


class _File(_Strict):
    classes: dict[str, _Class]
    cases: dict[str, _Case]


def _load(path: Path) -> _File:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return _File.model_validate(raw)
    except (OSError, yaml.YAMLError) as err:
        raise CalibrationError(f"{path}: cannot read: {err}") from None
    except ValidationError as err:
        parts = [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise CalibrationError("\n".join(parts)) from None


def load_efficiencies(path: Path = CALIBRATION_FILE) -> dict[str, Efficiency]:
    out = {}
    for key, c in _load(path).classes.items():
        out[key] = Efficiency(
            klass=key,
            decode_bw=c.decode_bw_eff,
            prefill_bw=c.prefill_bw_eff,
            decode_flops=c.decode_flops_eff,
            prefill_flops=c.prefill_flops_eff,
            step_fixed_s=c.step_fixed_ms / 1000,
            step_per_seq_s=c.step_per_seq_ms / 1000,
            dequant=dict(c.dequant),
        )
    if UNCALIBRATED not in out:
        raise CalibrationError(f"{path}: classes.{UNCALIBRATED}: missing (the default for unfitted GPUs)")
    return out


def load_sources(path: Path = CALIBRATION_FILE) -> dict[str, list[str]]:
    """Per class, the URLs its constants were fitted to or checked against (notes stay in the file)."""
    return {key: [src.url for src in c.sources] for key, c in _load(path).classes.items()}


def efficiency_for(calibration_class: str, path: Path = CALIBRATION_FILE) -> Efficiency:
    effs = load_efficiencies(path)
    if calibration_class not in effs:
        raise CalibrationError(f"{path}: calibration class {calibration_class!r}: not defined")
    return effs[calibration_class]


def load_cases(path: Path = CALIBRATION_FILE) -> list[Case]:
    return [Case(key=k, **c.model_dump()) for k, c in _load(path).cases.items()]


# The bands the validation table earned (written by ``python -m harness.sim.whatif --write-bands``).


def load_bands(path: Path = BANDS_FILE) -> dict[str, dict[str, dict[str, float]]]:
    """``{class: {regime: {"band": 0.18, "cases": 3}}}``; empty when the file is absent."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data.get("bands", {})


def band_label(
    gpu_key: str,
    calibration_class: str,
    tensor_parallel_size: int = 1,
    path: Path = BANDS_FILE,
    pipeline_parallel_size: int = 1,
) -> str:
    """The error band the validation table supports for a simulated cell, in words.

    Every regime without a published case is said to be uncalibrated, rather
    than borrowing another regime's band.
    """
    regimes = load_bands(path).get(calibration_class, {})
    wanted = ("decode", "throughput") + (("tp",) if tensor_parallel_size > 1 else ())
    wanted += ("pp",) if pipeline_parallel_size > 1 else ()  # no published case yet: always uncalibrated
    words = {
        "decode": "decode-bound steps",
        "throughput": "batched throughput",
        "tp": "tensor parallel",
        "pp": "pipeline parallel",
    }
    parts = []
    for r in wanted:
        b = regimes.get(r)
        if b:
            parts.append(f"±{b['band'] * 100:.0f} % for {words[r]} ({int(b['cases'])} published cases)")
        else:
            parts.append(f"{words[r]} uncalibrated")
    return f"SIMULATED, {gpu_key} ({calibration_class} class): " + "; ".join(parts)
