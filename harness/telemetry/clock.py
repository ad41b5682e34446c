"""How this host's wall clock relates to the monotonic clock every record and sample uses.

Why it is needed: records and local samples are stamped with
``time.monotonic_ns()`` (system-wide on Linux, immune to clock steps), but a
Prometheus answers in Unix wall-clock seconds. To draw the cluster's GPU
series on the records' time axis, the run reads both clocks together once
per cell and keeps the difference; ``summary.json`` records it with the
remote series so the mapping can be checked or redone.

A wall-clock step (NTP) during a cell shifts the mapped series by that step;
the monotonic axis itself is unaffected. The pair is read a few times and the
tightest bracket kept, so the mapping's own error is well under a millisecond
(``uncertainty_ns``), far below any Prometheus resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClockMap:
    """``wall_ns = monotonic_ns + wall_minus_monotonic_ns`` on this host."""

    wall_minus_monotonic_ns: int
    uncertainty_ns: int = 0

    @classmethod
    def read(cls, tries: int = 5) -> ClockMap:
        """Both clocks now: ``time.time_ns()`` bracketed by two monotonic reads, the tightest of ``tries``."""
        best: tuple[int, int] | None = None
        for _ in range(max(1, tries)):
            m0 = time.monotonic_ns()
            wall = time.time_ns()
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, wall - (m0 + m1) // 2)
        assert best is not None
        return cls(wall_minus_monotonic_ns=best[1], uncertainty_ns=(best[0] + 1) // 2)

    def to_monotonic_ns(self, wall_s: float) -> int:
        """A Unix timestamp in seconds (Prometheus's) on the records' monotonic axis."""
        return round(wall_s * 1e9) - self.wall_minus_monotonic_ns

    def to_wall_s(self, monotonic_ns: int) -> float:
        """A monotonic ns instant as Unix seconds (what Prometheus's ``start``/``end`` take)."""
        return (monotonic_ns + self.wall_minus_monotonic_ns) / 1e9
