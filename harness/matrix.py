"""Expand a scenario's servers × sweep settings into cells.

A *cell* is one concrete server configuration: every setting a scalar. Cells
are identified by a hash of what they *are* (backend, model, settings, args
and the workload), not by their position in the file, so that a gate or a
comparison matches the same configuration across runs even when the scenario
is reordered.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field

from harness.scenario import Scalar, Scenario, Server

# Workload fields that say how to judge a run or guard the harness, not what is measured: changing
# them keeps a configuration comparable with its baseline.
NOT_IDENTITY = {"abort_error_rate", "max_response_bytes", "max_response_chunks"}


@dataclass(frozen=True)
class Cell:
    cell_id: str
    server: Server
    settings: dict[str, Scalar] = field(hash=False)
    identity: str = ""
    repeat: int = 0
    protocol: str = "completions"  # the server's ``api``, else the workload's

    @property
    def label(self) -> str:
        """A short human label: server name plus only the settings that vary."""
        return self.cell_id


def _slug(value: Scalar) -> str:
    text = "none" if value is None else str(value).lower()
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def identity_of(server: Server, settings: dict[str, Scalar], scenario: Scenario) -> str:
    """A stable hash of configuration: same server config + same workload → same identity."""
    payload = {
        "backend": server.backend,
        "model": server.model,
        "settings": {k: settings[k] for k in sorted(settings)},
        "args": server.args,
        "workload": scenario.workload.model_dump(mode="json", exclude=NOT_IDENTITY),
    }
    if server.api is not None:  # only when set, so identities of existing scenarios stay stable
        payload["api"] = server.api
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def expand_cells(scenario: Scenario) -> list[Cell]:
    """Cartesian product of each server's list-valued settings, in file order.

    With ``repeats: N`` every configuration runs N times, each with its own
    server launch and seeds. Repeats share an identity (same configuration) and
    differ in ``cell_id`` (``__rep-2``...), which is how the gate finds them to
    estimate run-to-run noise.
    """
    cells: list[Cell] = []
    for server in scenario.servers:
        axes = [k for k, v in server.settings.items() if isinstance(v, list)]
        fixed = {k: v for k, v in server.settings.items() if not isinstance(v, list)}
        choices = [server.settings[k] for k in axes]
        for combo in itertools.product(*choices) if axes else [()]:
            settings: dict[str, Scalar] = dict(fixed)
            settings.update(dict(zip(axes, combo, strict=True)))
            suffix = "".join(f"__{k}-{_slug(v)}" for k, v in zip(axes, combo, strict=True))
            identity = identity_of(server, settings, scenario)
            for repeat in range(scenario.repeats):
                rep = f"__rep-{repeat + 1}" if scenario.repeats > 1 else ""
                cells.append(
                    Cell(
                        f"{server.name}{suffix}{rep}",
                        server,
                        settings,
                        identity,
                        repeat,
                        scenario.protocol_of(server),
                    )
                )
    return cells


@dataclass(frozen=True)
class Step:
    """One load level within a cell: closed-loop concurrency or open-loop rate."""

    step_id: str
    kind: str  # "concurrency" | "rate"
    target: float


def expand_steps(scenario: Scenario) -> list[Step]:
    steps = [Step(f"c{c}", "concurrency", float(c)) for c in scenario.workload.steps.concurrency]
    steps += [Step(f"r{r:g}", "rate", float(r)) for r in scenario.workload.steps.rate]
    return steps
