"""Faults the sim injects on demand, so the harness's error handling is tested for real.

Per-request faults are drawn with probability ``rate`` from the ``--fault``
kinds, or placed on exact requests with a schedule (``"http_500@3,stall:2@7"``,
1-based over generation requests). Process-level faults (``slow_start:N``,
``exit_after:N``) act once, whichever way they are given.

Why a separate seeded RNG from token lengths: turning faults on must not change
which lengths the other requests get, or a faulty run can't be compared to a
clean one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

HTTP_FAULTS = {"http_429": 429, "http_500": 500, "http_503": 503}
REQUEST_FAULTS = (*HTTP_FAULTS, "reset_before_headers", "disconnect_mid_stream", "malformed_sse", "stall")
PROCESS_FAULTS = ("slow_start", "exit_after")
NEEDS_ARG = ("stall", "slow_start", "exit_after")
ALL_FAULTS = (*REQUEST_FAULTS, *PROCESS_FAULTS)


class FaultError(ValueError):
    """A fault spec that can't be understood; the message names the spec."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    arg: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.arg:g}" if self.kind in NEEDS_ARG else self.kind


def parse_fault(text: str) -> Fault:
    """``KIND`` or ``KIND:ARG`` (``stall:2.5``, ``slow_start:3``, ``exit_after:10``)."""
    kind, _, raw = text.strip().partition(":")
    if kind not in ALL_FAULTS:
        raise FaultError(f"fault {text!r}: unknown kind {kind!r}; known: {', '.join(ALL_FAULTS)}")
    if kind in NEEDS_ARG:
        if not raw:
            raise FaultError(f"fault {text!r}: {kind} needs a number, e.g. {kind}:2")
        try:
            arg = float(raw)
        except ValueError:
            raise FaultError(f"fault {text!r}: {raw!r} is not a number") from None
        if arg < 0 or (kind == "exit_after" and (arg < 1 or arg != int(arg))):
            raise FaultError(f"fault {text!r}: bad value {raw!r}")
        return Fault(kind, arg)
    if raw:
        raise FaultError(f"fault {text!r}: {kind} takes no value")
    return Fault(kind)


def parse_schedule(text: str) -> dict[int, Fault]:
    """``KIND@N`` items, comma-separated: request N (1-based) gets that fault."""
    out: dict[int, Fault] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        spec, sep, where = item.rpartition("@")
        if not sep or not where.isdigit() or int(where) < 1:
            raise FaultError(f"fault schedule item {item!r}: expected KIND@N with N >= 1")
        out[int(where)] = parse_fault(spec)
    return out


@dataclass(slots=True)
class FaultPlan:
    """Which faults happen where. Mutable only through ``pick`` (its RNG)."""

    rate: float = 0.0
    kinds: list[Fault] = field(default_factory=list)
    schedule: dict[int, Fault] = field(default_factory=dict)
    slow_start_s: float = 0.0
    exit_after: int | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @classmethod
    def build(cls, rate: float, kinds: list[str], schedule: str, seed: int) -> FaultPlan:
        if not 0.0 <= rate <= 1.0:
            raise FaultError(f"--fault-rate {rate}: must be within [0, 1]")
        plan = cls(rate=rate, rng=random.Random(seed ^ 0x5EED))
        faults = [parse_fault(k) for k in kinds]
        scheduled = parse_schedule(schedule) if schedule else {}
        for fault in [*faults, *scheduled.values()]:
            if fault.kind == "slow_start":
                plan.slow_start_s = fault.arg
            elif fault.kind == "exit_after":
                plan.exit_after = int(fault.arg)
        plan.kinds = [f for f in faults if f.kind in REQUEST_FAULTS]
        plan.schedule = {n: f for n, f in scheduled.items() if f.kind in REQUEST_FAULTS}
        if rate > 0 and not plan.kinds:
            raise FaultError("--fault-rate given but no per-request --fault kind to draw from")
        return plan

    def pick(self, seq: int) -> Fault | None:
        """The fault for generation request number ``seq`` (1-based), if any."""
        if seq in self.schedule:
            return self.schedule[seq]
        if self.rate > 0 and self.rng.random() < self.rate:
            return self.kinds[self.rng.randrange(len(self.kinds))]
        return None
