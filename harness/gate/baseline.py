"""Compact baselines: what a repository commits so CI can gate later runs against it.

Why compact and versioned: the file lives in git and is read by future
tokenbench versions. It carries its own ``schema_version`` (refused when it
differs), the run summaries, the scenario, an environment fingerprint and a
deterministic subset of per-request samples (default ≤ 2 000 requests and
≤ 4 000 ITL gaps per step and repeat, with window rates from all requests),
which keeps a typical baseline in the tens of kilobytes to a few megabytes.

Secrets: cell ``env`` and ``command`` are dropped from the stored summaries;
an API key may sit in either.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.atomic import write_text
from harness.gate.rundata import GateInputError, GateRun, StepGroup, note_limited, read_json
from harness.gate.samples import StepSamples
from harness.redact import redact_command, scrub
from harness.results import RunSummary

BASELINE_SCHEMA_VERSION = 1
DEFAULT_MAX_REQUESTS = 2000
DEFAULT_MAX_ITL = 4000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleSet(_Model):
    """One repeat of one (cell identity, step): per-request columns, aligned."""

    identity: str
    cell_id: str
    step_id: str
    repeat: str
    duration_s: float
    n_total: int
    n_ok: int
    ttft_ms: list[float | None]
    tpot_ms: list[float | None]
    e2e_ms: list[float | None]
    output_tokens: list[float | None]
    ok: list[bool]
    error_class: list[str | None]
    itl_ms: list[float]
    itl_requests: int
    windows: dict[str, list[float]]
    errors: dict[str, int] = Field(default_factory=dict)


class Baseline(_Model):
    kind: str = "tokenbench-baseline"
    schema_version: int = BASELINE_SCHEMA_VERSION
    name: str
    created_at: str
    sources: list[str]
    fingerprint: dict[str, Any]
    env: dict[str, Any]
    scenario: dict[str, Any] | None
    summary: RunSummary
    samples: list[SampleSet]


def _clean(values: np.ndarray, digits: int = 4) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


def _to_set(s: StepSamples) -> SampleSet:
    return SampleSet(
        identity=s.identity,
        cell_id=s.cell_id,
        step_id=s.step_id,
        repeat=s.repeat,
        duration_s=s.duration_s,
        n_total=s.n_total,
        n_ok=s.n_ok,
        ttft_ms=_clean(s.ttft_ms),
        tpot_ms=_clean(s.tpot_ms),
        e2e_ms=_clean(s.e2e_ms),
        output_tokens=_clean(s.output_tokens, 0),
        ok=[bool(v) for v in s.ok],
        error_class=list(s.error_class),
        itl_ms=[v for v in _clean(s.itl_ms) if v is not None],
        itl_requests=s.itl_requests,
        windows={k: [round(v, 4) for v in w] for k, w in s.windows.items()},
        errors=s.errors,
    )


def _arr(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _from_set(m: SampleSet) -> StepSamples:
    return StepSamples(
        identity=m.identity,
        cell_id=m.cell_id,
        step_id=m.step_id,
        repeat=m.repeat,
        duration_s=m.duration_s,
        n_total=m.n_total,
        n_ok=m.n_ok,
        ttft_ms=_arr(m.ttft_ms),
        tpot_ms=_arr(m.tpot_ms),
        e2e_ms=_arr(m.e2e_ms),
        output_tokens=_arr(m.output_tokens),
        ok=np.array(m.ok, dtype=bool),
        error_class=list(m.error_class),
        itl_ms=np.array(m.itl_ms, dtype=np.float64),
        itl_requests=m.itl_requests,
        windows=dict(m.windows),
        errors=dict(m.errors),
    )


def fingerprint(env: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``env.json`` that change performance: GPU model and driver, CPU model, backend builds."""
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else None
    cpu = env.get("cpu")
    if isinstance(cpu, dict):
        cpu = cpu.get("model") or cpu.get("name") or cpu.get("brand")
    versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    backends = versions.get("backends") if isinstance(versions.get("backends"), dict) else {}
    return {
        "gpu": (gpu or {}).get("name"),
        "gpu_driver": (gpu or {}).get("driver"),
        "cpu": cpu if isinstance(cpu, str | None) else str(cpu),
        "backends": {str(k): str(v) for k, v in sorted(backends.items())},
    }


def fingerprint_diff(base: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Human-readable differences, e.g. ``gpu: 'NVIDIA A100' → 'NVIDIA H100'``; empty when they match."""
    diffs: list[str] = []
    for key in ("gpu", "gpu_driver", "cpu"):
        if base.get(key) != run.get(key):
            diffs.append(f"{key}: {base.get(key)!r} (baseline) vs {run.get(key)!r} (run)")
    b_back, r_back = base.get("backends") or {}, run.get("backends") or {}
    for name in sorted(set(b_back) | set(r_back)):
        if b_back.get(name) != r_back.get(name):
            diffs.append(
                f"backend {name}: {b_back.get(name, 'absent')!r} (baseline) vs {r_back.get(name, 'absent')!r} (run)"
            )
    return diffs


def _strip_secrets(summary: RunSummary) -> RunSummary:
    copy = summary.model_copy(deep=True)
    for cell in copy.cells:
        cell.env = {}
        cell.command = []
        cell.log_tail = []
    return copy


def _strip_scenario_secrets(scenario: dict[str, Any] | None) -> dict[str, Any] | None:
    """Server ``env`` values (tokens, keys) are replaced; the names stay so the setup is still readable.

    Secret flags' values in ``args``, URL userinfo and secret shapes go too: a run folder written
    before the run's own redaction (``harness.runsecrets``) may still hold them.
    """
    if not scenario:
        return scenario
    clean = json.loads(json.dumps(scenario, default=str))
    for server in clean.get("servers") or []:
        if isinstance(server, dict) and isinstance(server.get("env"), dict):
            server["env"] = {k: "<redacted>" for k in server["env"]}
        if isinstance(server, dict) and isinstance(server.get("args"), list):
            server["args"] = redact_command([str(a) for a in server["args"]])
    return scrub(clean)


def baseline_path(name: str, root: Path = Path("reports/baselines")) -> Path:
    if not NAME_RE.match(name):
        raise GateInputError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (no slashes)")
    return root / f"{name}.json"


def build_baseline(run: GateRun, name: str) -> Baseline:
    return Baseline(
        name=name,
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        sources=[str(p) for p in run.sources],
        fingerprint=fingerprint(run.env),
        env=run.env,
        scenario=_strip_scenario_secrets(run.scenario),
        summary=_strip_secrets(run.summary),
        samples=[_to_set(s) for g in run.steps.values() for s in g.repeats],
    )


def save_baseline(run: GateRun, name: str, path: Path) -> Path:
    """Write the baseline atomically; commits nothing (that is the user's call)."""
    data = build_baseline(run, name).model_dump(mode="json")
    write_text(path, json.dumps(data, separators=(",", ":")) + "\n")
    return path


def load_baseline(path: Path) -> GateRun:
    """Read a baseline file back into a ``GateRun``; any problem is a ``GateInputError`` naming the file."""
    if not path.is_file():
        raise GateInputError(
            f"{path}: baseline not found (create one with: tokenbench baseline save RUN --name NAME)"
        )
    raw = read_json(path, "baseline")
    if not isinstance(raw, dict) or raw.get("kind") != "tokenbench-baseline":
        raise GateInputError(f"{path}: not a tokenbench baseline (field 'kind' missing or wrong)")
    if raw.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise GateInputError(
            f"{path}: baseline schema_version is {raw.get('schema_version')!r}, this tokenbench reads "
            f"{BASELINE_SCHEMA_VERSION}; re-create it with: tokenbench baseline save RUN --name NAME"
        )
    summary_version = (raw.get("summary") or {}).get("schema_version")
    from harness.results import SCHEMA_VERSION

    if summary_version != SCHEMA_VERSION:
        raise GateInputError(
            f"{path}: summary.schema_version is {summary_version!r}, this tokenbench reads {SCHEMA_VERSION}"
        )
    try:
        base = Baseline.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GateInputError(f"{path}: invalid baseline at {where}: {first['msg']}") from None
    run = GateRun(base.name, [path], "baseline", base.summary, base.env, base.scenario)
    cells = {(c.identity, s.step_id): (c, s) for c in base.summary.cells for s in c.steps}
    for c in base.summary.cells:
        if c.status == "failed":
            run.failed_cells.setdefault(c.identity, c)
    for m in base.samples:
        key = (m.identity, m.step_id)
        if key not in cells:
            raise GateInputError(f"{path}: samples for {m.cell_id}/{m.step_id} have no summary entry")
        cell, step = cells[key]
        run.steps.setdefault(key, StepGroup(key, cell, step)).repeats.append(_from_set(m))
    if not run.steps:
        raise GateInputError(f"{path}: baseline holds no per-request samples")
    for c in base.summary.cells:
        for s in c.steps:
            if (c.identity, s.step_id) in run.steps:
                note_limited(run.steps[(c.identity, s.step_id)], f"baseline {base.name}/{c.cell_id}", s)
    return run


def resolve_baseline(ref: str, root: Path = Path("reports/baselines")) -> Path:
    """A baseline argument may be a path or a bare name under ``reports/baselines``."""
    p = Path(ref)
    if p.suffix == ".json" or p.exists() or "/" in ref:
        return p
    return root / f"{ref}.json"
