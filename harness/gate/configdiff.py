"""What differs between the configurations of two runs: scenario fields, environment, cell settings.

Why: a compare page that shows "+15 % TPOT" without "itl_ms 10 → 11.5" or
"vllm 0.31 → 0.32" leaves the reader to guess the cause. The scenario files
are flattened to dotted paths and compared leaf by leaf; the environment
fingerprint (GPU, driver, CPU, backend builds) and each matched cell's
settings are added. Secrets never reach the page: server ``env`` values and
every secret-named field are replaced before comparing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.gate.baseline import fingerprint
from harness.gate.rundata import GateRun
from harness.redact import REDACTED, is_secret_name

MAX_SHOWN = 80


@dataclass(frozen=True)
class ConfigChange:
    path: str  # e.g. "scenario: servers.0.settings.itl_ms"
    ref: str
    other: str


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_name(str(k)):
                out[path] = REDACTED
            elif str(k) == "env" and isinstance(v, dict):
                out.update({f"{path}.{name}": REDACTED for name in v})
            else:
                out.update(_flatten(v, path))
        return out
    if isinstance(data, list) and data and any(isinstance(x, dict | list) for x in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: data}


_ABSENT = object()


def _shown(value: Any) -> str:
    text = "absent" if value is _ABSENT else repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _diff(kind: str, a: dict[str, Any], b: dict[str, Any]) -> list[ConfigChange]:
    changes = []
    for path in sorted(set(a) | set(b)):
        va, vb = a.get(path, _ABSENT), b.get(path, _ABSENT)
        if va != vb:
            changes.append(ConfigChange(f"{kind}: {path}", _shown(va), _shown(vb)))
    return changes


def config_diff(ref: GateRun, other: GateRun) -> list[ConfigChange]:
    """Scenario, environment and matched-cell differences of ``other`` relative to ``ref``."""
    changes = _diff("scenario", _flatten(ref.scenario or {}), _flatten(other.scenario or {}))
    changes += _diff("environment", _flatten(fingerprint(ref.env)), _flatten(fingerprint(other.env)))
    for key, group in ref.steps.items():
        mate = other.steps.get(key)
        if mate is None:
            continue
        a, b = group.cell, mate.cell
        fields_a = _flatten({"backend": a.backend, "model": a.model, "settings": a.settings})
        fields_b = _flatten({"backend": b.backend, "model": b.model, "settings": b.settings})
        for c in _diff(f"cell {b.cell_id}", fields_a, fields_b):
            if c not in changes:
                changes.append(c)
    return changes
