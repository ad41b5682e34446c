"""Pair up the same configuration across runs.

Why by identity, never by position: scenarios get reordered, sweeps grow a
new value, a cell fails to start. ``CellResult.identity`` hashes what a cell
*is* (backend, model, settings, args, workload), so (identity, step_id) names
the same measurement in any run, whatever its position or cell name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from harness.gate.rundata import GateRun, Key, StepGroup
from harness.results import CellResult
from harness.search import is_probe

MatchBy = Literal["identity", "name"]


def rekey(run: GateRun, by: MatchBy) -> GateRun:
    """The run keyed by (identity, step) — as loaded — or by (cell name, step)."""
    if by == "identity":
        return run
    steps: dict[Key, StepGroup] = {}
    for group in run.steps.values():
        key = (group.cell.cell_id, group.key[1])
        steps[key] = dataclasses.replace(group, key=key)
    failed = {cell.cell_id: cell for cell in run.failed_cells.values()}
    return dataclasses.replace(run, steps=steps, failed_cells=failed)


@dataclass(frozen=True)
class Pair:
    key: Key
    base: StepGroup
    run: StepGroup

    @property
    def label(self) -> str:
        """Human label: the run's cell name and step, plus the baseline's cell name if it differs."""
        name = self.run.cell.cell_id
        if self.base.cell.cell_id != name:
            name += f" (baseline: {self.base.cell.cell_id})"
        return f"{name} / {self.key[1]}"


@dataclass
class Mismatch:
    key: Key
    cell_id: str
    side: str  # which side has it: "baseline" | "run"
    reason: str

    def describe(self) -> str:
        return f"{self.cell_id} / {self.key[1]} [{self.key[0]}]: {self.reason}"


@dataclass
class Matching:
    pairs: list[Pair] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    failed_in_run: list[Key] = field(default_factory=list)  # baseline had data, run's cell failed
    # identity → (baseline cells, run cells) with an SLO capacity search result (harness/gate/capacity.py)
    capacities: dict[str, tuple[list[CellResult], list[CellResult]]] = field(default_factory=dict)


def match_runs(base: GateRun, run: GateRun) -> Matching:
    """Pairs in the run's order; mismatches on either side listed with a reason."""
    m = Matching(capacities=match_capacities(base, run))
    for key, group in run.steps.items():
        other = base.steps.get(key)
        if other is not None:
            m.pairs.append(Pair(key, other, group))
        elif is_probe(key[1]):
            continue  # a search's probes differ between runs: capacity_req_s compares the searches
        else:
            known_cell = any(k[0] == key[0] for k in base.steps)
            reason = "step not in the baseline" if known_cell else "configuration not in the baseline"
            m.mismatches.append(Mismatch(key, group.cell.cell_id, "run", reason))
    for key, group in base.steps.items():
        if key in run.steps or (is_probe(key[1]) and key[0] not in run.failed_cells):
            continue
        if key[0] in run.failed_cells:
            err = run.failed_cells[key[0]].error or "cell failed"
            m.failed_in_run.append(key)
            m.mismatches.append(
                Mismatch(key, group.cell.cell_id, "baseline", f"cell failed in the run: {err}")
            )
        else:
            m.mismatches.append(Mismatch(key, group.cell.cell_id, "baseline", "not measured in the run"))
    return m


def match_capacities(base: GateRun, run: GateRun) -> dict[str, tuple[list[CellResult], list[CellResult]]]:
    """Cells that both sides ran a capacity search in, paired as their steps are (identity or name)."""
    found: dict[str, tuple[list[CellResult], list[CellResult]]] = {}
    for side, gate_run in enumerate((base, run)):
        keyed = {g.cell.cell_id: g.key[0] for g in gate_run.steps.values()}  # rekey()'s choice
        for cell in gate_run.summary.cells:
            if cell.capacity is not None:
                found.setdefault(keyed.get(cell.cell_id, cell.identity), ([], []))[side].append(cell)
    return {k: v for k, v in found.items() if v[0] and v[1]}


def match_many(runs: list[GateRun]) -> tuple[list[Key], list[Mismatch]]:
    """Keys present in every run (first run's order) and, per run, what the others lack."""
    if not runs:
        return [], []
    common = [k for k in runs[0].steps if all(k in r.steps for r in runs[1:])]
    mismatches: list[Mismatch] = []
    for run in runs:
        for key, group in run.steps.items():
            if key not in common:
                missing = [r.label for r in runs if key not in r.steps]
                mismatches.append(
                    Mismatch(key, group.cell.cell_id, run.label, f"missing in {', '.join(missing)}")
                )
    return common, mismatches


def name_hint(runs: list[GateRun]) -> str | None:
    """When identity matching pairs nothing but cell names do, say how to pair them by name."""
    named = [{(g.cell.cell_id, k[1]) for k, g in r.steps.items()} for r in runs]
    common = set.intersection(*named) if named else set()
    if not common:
        return None
    shown = ", ".join(f"{c} / {s}" for c, s in sorted(common)[:3])
    return (
        f"hint: {shown} appear in every run under the same cell name but with another configuration "
        "identity (settings, model or workload changed); pass --match name to pair cells by name"
    )
