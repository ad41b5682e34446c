"""What a distributed step's ``health.json`` says about its workers: host, clock, lost, refused.

Why apart from ``distributed`` (which runs in the Locust master, under gevent): the rules that flag a
step are plain data in, plain data out, and are unit-tested without starting Locust.

A step is flagged harness-limited (``limited: true``, with a reason) when a worker was lost mid-step
(the load was lower than planned from then on) or when a worker's clock offset is uncertain by more
than 1 ms (``clocksync.UNCERTAINTY_LIMIT_NS``: cross-worker windows and throughput are then in doubt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.load.clocksync import ClockEstimate


@dataclass(frozen=True)
class WorkerFacts:
    index: int
    host: str
    clock: ClockEstimate | None
    lost: bool


def amend_health(health: dict[str, Any], workers: list[WorkerFacts], refused: int = 0) -> None:
    """Add each admitted worker's host and clock to ``health`` and flag the step where it is in doubt."""
    by_index = {w.index: w for w in workers}
    for entry in health.get("workers", []):
        facts = by_index.get(entry.get("index"))
        if facts is not None:
            entry["host"] = facts.host
            if facts.clock is not None:
                entry.update(facts.clock.to_dict())
    ordered = sorted(workers, key=lambda w: w.index)
    health["clock_sync"] = [
        {"index": w.index, "host": w.host, "lost": w.lost, **(w.clock.to_dict() if w.clock else {})}
        for w in ordered
    ]
    reasons: list[str] = health.setdefault("reasons", [])
    for w in ordered:
        if w.lost:
            reasons.append(
                f"load worker {w.index} on {w.host} was lost mid-step: its records received so far are kept, "
                "the load was lower than planned from then on"
            )
            health["limited"] = True
        if w.clock is not None and w.clock.doubtful:
            reasons.append(
                f"load worker {w.index} on {w.host}: clock offset uncertain by "
                f"{w.clock.uncertainty_ns / 1e6:.2f} ms (> 1 ms): cross-worker timing is in doubt"
            )
            health["limited"] = True
    if refused:
        health["refused_workers"] = refused
