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

from harness.bounds import MAX_CELL_ID, MAX_CELLS
from harness.scenario import Scalar, Scenario, Server
from harness.workload import step_id_of
from harness.yamlfile import shown

# Workload fields that say how to judge a run or guard the harness, not what is measured: changing
# them keeps a configuration comparable with its baseline. ``distributed`` says which machines make
# the load, not what load: the same results, measured from more hosts.
NOT_IDENTITY = {"abort_error_rate", "max_response_bytes", "max_response_chunks", "distributed"}


@dataclass(frozen=True)
class Cell:
    cell_id: str
    server: Server
    settings: dict[str, Scalar] = field(hash=False)
    identity: str = ""
    repeat: int = 0
    protocol: str = "completions"  # the server's ``api``, else the workload's
    # Cells with the same key share one server launch (a server whose ``api`` is a list is
    # measured over each protocol in turn on the very same engine); empty: a launch of its own.
    launch_key: str = ""

    @property
    def label(self) -> str:
        """A short human label: server name plus only the settings that vary."""
        return self.cell_id


def slug(value: Scalar) -> str:
    """How a sweep value reads in a cell id (``quantization-none``, ``max_num_seqs-16``)."""
    text = "none" if value is None else str(value).lower()
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def matrix_problems(scenario: Scenario) -> list[str]:
    """Sweeps too large to run and cell ids too long for a folder name, found before expanding.

    Counted, not expanded: ten axes of ten values would be 10^10 cells to build first.
    """
    problems: list[str] = []
    total = 0
    for i, server in enumerate(scenario.servers):
        count = scenario.repeats
        longest = len(server.name) + (len(f"__rep-{scenario.repeats}") if scenario.repeats > 1 else 0)
        for key, value in server.settings.items():
            if isinstance(value, list) and value:
                count *= len(value)
                longest += len(f"__{key}-") + max(len(slug(v)) for v in value)
        protocols = scenario.protocols_of(server)
        if len(protocols) > 1:  # one cell per protocol of a shared launch: ``__api-tgis``
            count *= len(protocols)
            longest += len("__api-") + max(len(slug(a)) for a in protocols)
        total += count
        if longest > MAX_CELL_ID:
            problems.append(
                f"servers[{i}].name: its longest cell id is {longest} characters (name + swept "
                f"settings); at most {MAX_CELL_ID}, as a cell id names a folder: shorten the name "
                f"or the sweep values (got {shown(server.name)})"
            )
    if total > MAX_CELLS:
        problems.append(
            f"servers: servers × sweep values × repeats give {total} cells; at most {MAX_CELLS} "
            f"(got {len(scenario.servers)} servers, repeats {scenario.repeats})"
        )
    return problems


def _workload_identity(scenario: Scenario) -> dict[str, object]:
    """The workload as the identity sees it: fields added later enter only when set, so the
    identities of existing scenarios (and the baselines saved from them) stay stable."""
    workload = scenario.workload.model_dump(mode="json", exclude=NOT_IDENTITY)
    steps = workload.get("steps")
    if isinstance(steps, dict) and steps.get("search") is None:
        steps.pop("search", None)  # workload.steps.search (the capacity search), when not asked for
    if workload.get("connections") == "prewarm":
        workload.pop("connections")  # the default; ``cold`` measures something else, so it enters
    return workload


def identity_of(
    server: Server, settings: dict[str, Scalar], scenario: Scenario, api: str | None = None
) -> str:
    """A stable hash of configuration: same server config + same workload → same identity.

    ``api`` is the cell's protocol when the server names one or several: a cell measured over
    ``tgis`` as one of a list has the identity of a server with ``api: tgis`` alone.
    """
    payload = {
        "backend": server.backend,
        "model": server.model,
        "settings": {k: settings[k] for k in sorted(settings)},
        "args": server.args,
        "workload": _workload_identity(scenario),
    }
    if server.api is not None:  # only when set, so identities of existing scenarios stay stable
        payload["api"] = api if api is not None else server.api
    if server.deploy is not None:  # what of the deploy block configures the server (not where it runs)
        from harness.backends.registry import get_spec

        payload["deploy"] = get_spec(server.backend).deploy_identity(server)
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def expand_cells(scenario: Scenario) -> list[Cell]:
    """Cartesian product of each server's list-valued settings, in file order.

    With ``repeats: N`` every configuration runs N times, each with its own
    server launch and seeds. Repeats share an identity (same configuration) and
    differ in ``cell_id`` (``__rep-2``...), which is how the gate finds them to
    estimate run-to-run noise. A server whose ``api`` is a list gives one cell
    per protocol (``__api-tgis``...), adjacent and sharing a ``launch_key``: the
    run starts that server once and measures each protocol on the same engine.
    """
    cells: list[Cell] = []
    for server in scenario.servers:
        axes = [k for k, v in server.settings.items() if isinstance(v, list)]
        fixed = {k: v for k, v in server.settings.items() if not isinstance(v, list)}
        choices = [server.settings[k] for k in axes]
        for combo in itertools.product(*choices) if axes else [()]:
            settings: dict[str, Scalar] = dict(fixed)
            settings.update(dict(zip(axes, combo, strict=True)))
            suffix = "".join(f"__{k}-{slug(v)}" for k, v in zip(axes, combo, strict=True))
            protocols = scenario.protocols_of(server)
            for repeat in range(scenario.repeats):
                rep = f"__rep-{repeat + 1}" if scenario.repeats > 1 else ""
                launch = f"{server.name}{suffix}{rep}"
                for api in protocols:
                    cells.append(
                        Cell(
                            f"{server.name}{suffix}__api-{slug(api)}{rep}" if len(protocols) > 1 else launch,
                            server,
                            settings,
                            identity_of(server, settings, scenario, api),
                            repeat,
                            api,
                            launch if len(protocols) > 1 else "",
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
    steps = [
        Step(step_id_of("concurrency", c), "concurrency", float(c))
        for c in scenario.workload.steps.concurrency
    ]
    steps += [Step(step_id_of("rate", r), "rate", float(r)) for r in scenario.workload.steps.rate]
    return steps
