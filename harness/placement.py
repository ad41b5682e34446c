"""CPU placement: the launched server and the load generator on disjoint CPU sets.

Why: when server and client share a host, the server's threads (vLLM's
OpenMP pool, its API server) are scheduled on the client's core and the
client's event loop stalls: 20 ms loop-lag p99 at 3.5 % client CPU in a
1-user step. The measured latency then carries the client's wait, and the
step is flagged harness-limited for a cause that is not the client's load.

How: the affinity is set on the process-group leader (``supervise.py``)
before it starts the command, so the command, its threads and its children
inherit it from the first instruction (affinity is per thread in Linux and
is inherited on fork and kept across exec). vLLM's CPU backend binds its
OpenMP threads within the affinity it inherited, so it stays inside its set.

``placement:`` in a scenario (top level, outside cell identities: it moves
the harness around the host, not the server's configuration):

* ``none`` (the default): nothing is pinned, as before. Default because a
  pinned server gets fewer cores than the host has, which changes what a
  benchmark of the server measures; a user asks for the split.
* ``auto``: the CPUs this process may use (``os.sched_getaffinity(0)``) are
  split: the last quarter (at least one) for the load generator, the rest for
  the server. On a host with one CPU nothing can be split: a warning is
  recorded and nothing is pinned.
* ``{server_cpus: "0-5", load_cpus: "6,7"}``: explicit Linux CPU lists.

What was asked and what each started process really got is recorded in
``env.json`` (``placement``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator

from harness.bounds import FieldProblem

MAX_CPU = 4095
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
SERVER = "server"
LOAD = "load"


class PlacementError(ValueError):
    """A CPU placement that cannot be applied on this host."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """A Linux CPU list (``0-3,6``) as a set; ``ValueError`` saying what is wrong."""
    cpus: set[int] = set()
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"{text!r} is not a CPU list (expected e.g. '0-3,6')")
    for part in parts:
        match = _RANGE.match(part)
        if match is None:
            raise ValueError(f"{part!r} in {text!r} is not a CPU number or range (expected e.g. '0-3,6')")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"range {part!r} in {text!r} ends before it starts")
        if high > MAX_CPU:
            raise ValueError(f"CPU {high} in {text!r} is above {MAX_CPU}")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int] | list[int]) -> str:
    """The compact Linux form of a CPU set (``{0,1,2,5}`` -> ``0-2,5``)."""
    ordered = sorted(cpus)
    out: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


class CpuSets(BaseModel):
    """``placement: {server_cpus, load_cpus}``: explicit, disjoint CPU lists."""

    model_config = ConfigDict(extra="forbid")

    server_cpus: str
    load_cpus: str

    @field_validator("server_cpus", "load_cpus", mode="before")
    @classmethod
    def _cpu_list(cls, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"must be a CPU list string such as '0-3,6' (got {type(value).__name__})")
        parse_cpu_list(value)
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> CpuSets:
        shared = parse_cpu_list(self.server_cpus) & parse_cpu_list(self.load_cpus)
        if shared:
            raise FieldProblem(
                "load_cpus",
                self.load_cpus,
                f"shares CPU(s) {format_cpu_list(shared)} with server_cpus {self.server_cpus!r}; "
                "the two sets must be disjoint",
            )
        return self


WORDS = ("none", "auto")


def parse_setting(value: Any) -> str | CpuSets:
    """``placement:`` as given: a word, or the CPU-set mapping (its first problem named by field)."""
    if isinstance(value, str | CpuSets):
        if isinstance(value, str) and value not in WORDS:
            raise ValueError("must be 'none', 'auto' or {server_cpus: LIST, load_cpus: LIST}")
        return value
    if not isinstance(value, dict):
        raise ValueError("must be 'none', 'auto' or {server_cpus: LIST, load_cpus: LIST}")
    try:
        return CpuSets.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        problem = (first.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):
            raise problem from None
        field = ".".join(str(p) for p in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise FieldProblem(field, first.get("input"), message.removeprefix("Value error, ")) from None


# A word or a mapping, judged before pydantic's union so a bad value gets one error of its shape.
PlacementSetting = Annotated[str | CpuSets, BeforeValidator(parse_setting)]


@dataclass
class Placement:
    """The resolved placement of one run: which CPUs each kind of process is put on.

    ``cpus`` maps a kind (``server``, ``load``) to its set; an empty mapping
    pins nothing. ``applied`` collects, per kind, what each started process
    really got (read back from the kernel), for ``env.json``.
    """

    requested: str
    available: frozenset[int]
    cpus: dict[str, frozenset[int]] = field(default_factory=dict)
    note: str | None = None
    applied: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def for_kind(self, kind: str) -> frozenset[int] | None:
        return self.cpus.get(kind)

    def record(self, kind: str, pid: int, name: str) -> None:
        """Read back the affinity ``pid`` runs with and keep it under ``kind`` (at most 20 per kind)."""
        got = affinity_of(pid)
        rows = self.applied.setdefault(kind, [])
        if len(rows) < 20:
            rows.append({"pid": pid, "process": name, "cpus": format_cpu_list(got) if got else None})

    def to_env(self) -> dict[str, Any]:
        """The ``placement`` block of ``env.json``."""
        return {
            "requested": self.requested,
            "available_cpus": format_cpu_list(self.available),
            "server_cpus": format_cpu_list(self.cpus[SERVER]) if SERVER in self.cpus else None,
            "load_cpus": format_cpu_list(self.cpus[LOAD]) if LOAD in self.cpus else None,
            "note": self.note,
            "applied": {kind: list(rows) for kind, rows in self.applied.items()},
        }


def affinity_of(pid: int) -> frozenset[int] | None:
    """The CPUs ``pid``'s main thread may run on; None when it is gone or not ours to read."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError:
        return None


def available_cpus() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


def auto_split(available: frozenset[int]) -> tuple[frozenset[int], frozenset[int]] | None:
    """(server, load) from the CPUs available: the load generator gets the last quarter (>= 1)."""
    ordered = sorted(available)
    if len(ordered) < 2:
        return None
    load_n = max(1, len(ordered) // 4)
    return frozenset(ordered[:-load_n]), frozenset(ordered[-load_n:])


def setting_text(setting: str | CpuSets) -> str:
    if isinstance(setting, CpuSets):
        return f"server_cpus={setting.server_cpus} load_cpus={setting.load_cpus}"
    return setting


def placement_problems(setting: str | CpuSets, available: frozenset[int] | None = None) -> list[str]:
    """Explicit CPU lists naming CPUs this process may not use (one message each, naming the field)."""
    if not isinstance(setting, CpuSets):
        return []
    have = available if available is not None else available_cpus()
    problems = []
    for key in ("server_cpus", "load_cpus"):
        value = getattr(setting, key)
        missing = parse_cpu_list(value) - have
        if missing:
            problems.append(
                f"placement.{key}: CPU(s) {format_cpu_list(missing)} of {value!r} are not available "
                f"here (this host allows {format_cpu_list(have)})"
            )
    return problems


def resolve_placement(setting: str | CpuSets, available: frozenset[int] | None = None) -> Placement:
    """The sets to apply for a scenario's ``placement``; raises :class:`PlacementError` for CPUs not here."""
    have = available if available is not None else available_cpus()
    text = setting_text(setting)
    if setting == "none":
        return Placement(text, have)
    if setting == "auto":
        split = auto_split(have)
        if split is None:
            return Placement(
                text,
                have,
                note=f"only CPU {format_cpu_list(have)} available: nothing to split, nothing pinned",
            )
        return Placement(text, have, {SERVER: split[0], LOAD: split[1]})
    assert isinstance(setting, CpuSets)
    problems = placement_problems(setting, have)
    if problems:
        raise PlacementError("; ".join(problems))
    return Placement(
        text, have, {SERVER: parse_cpu_list(setting.server_cpus), LOAD: parse_cpu_list(setting.load_cpus)}
    )
