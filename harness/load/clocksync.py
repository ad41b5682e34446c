"""A worker's clock offset to the master, estimated NTP-style over Locust's message channel.

Why: every record stamp is ``time.monotonic_ns()``, whose zero is arbitrary per
host (boot time). Records from two hosts cannot be merged, windowed or compared
until each worker's stamps are mapped to the master's time base. The master
sends pings stamped ``t1`` (its clock); the worker answers at once with ``t2``
(receipt) and ``t3`` (reply), both on its clock; the master stamps ``t4`` when
the answer arrives. With ``offset = worker_clock - master_clock``:

* causality gives, for every exchange, ``t3 - t4 <= offset <= t2 - t1`` (the
  ping cannot arrive before it was sent, nor the pong before it left);
* the interval is as wide as the exchange's round trip ``(t4 - t1) - (t3 - t2)``,
  so the exchanges with the *smallest* round trips say the most.

``estimate`` keeps the ``keep`` fastest exchanges, intersects their intervals
and reports the midpoint with half the width as its uncertainty: a sound bound
(not a standard error) as long as neither clock drifts noticeably during the
few hundred milliseconds of the exchange. Should the intervals not intersect
(a clock stepped), it falls back to the single fastest exchange.

Pure functions, no gevent or Locust: unit-tested on their own. ``apply_test_offset``
is the one test hook (``TOKENBENCH_TEST_CLOCK_OFFSET_NS``): it shifts this
process's monotonic clock, to simulate a worker on another host over loopback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

TEST_OFFSET_ENV = "TOKENBENCH_TEST_CLOCK_OFFSET_NS"
UNCERTAINTY_LIMIT_NS = 1_000_000  # above 1 ms, cross-worker alignment is in doubt: the step is flagged
ROUNDS = 24
KEEP = 4


class ClockSyncError(ValueError):
    """No usable exchange to estimate an offset from."""


@dataclass(frozen=True)
class Exchange:
    """One ping-pong: ``t1``/``t4`` on the master's clock, ``t2``/``t3`` on the worker's (ns)."""

    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def round_trip_ns(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)

    @property
    def offset_ns(self) -> float:
        """The classic NTP point estimate of ``worker - master``."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2

    @property
    def bounds_ns(self) -> tuple[int, int]:
        """What causality allows for ``worker - master``: ``[t3 - t4, t2 - t1]``."""
        return self.t3 - self.t4, self.t2 - self.t1


@dataclass(frozen=True)
class ClockEstimate:
    """A worker's offset (``worker - master``, ns) and the half-width of the interval it lies in."""

    offset_ns: int
    uncertainty_ns: int
    round_trip_ns: int  # the fastest exchange's
    exchanges: int  # how many answered
    kept: int

    @property
    def doubtful(self) -> bool:
        return self.uncertainty_ns > UNCERTAINTY_LIMIT_NS

    def to_master(self, worker_ns: int) -> int:
        """A worker stamp in the master's time base."""
        return worker_ns - self.offset_ns

    def to_dict(self) -> dict[str, float | int]:
        return {
            "clock_offset_ms": self.offset_ns / 1e6,
            "clock_uncertainty_ms": self.uncertainty_ns / 1e6,
            "clock_round_trip_ms": self.round_trip_ns / 1e6,
            "clock_exchanges": self.exchanges,
        }


def estimate(exchanges: Sequence[Exchange], keep: int = KEEP) -> ClockEstimate:
    """The offset from the ``keep`` exchanges with the smallest round trips (see module docstring)."""
    valid = [e for e in exchanges if e.round_trip_ns >= 0 and e.t4 >= e.t1 and e.t3 >= e.t2]
    if not valid:
        raise ClockSyncError(f"no usable clock exchange among {len(exchanges)}")
    best = sorted(valid, key=lambda e: e.round_trip_ns)[: max(1, keep)]
    lo = max(e.bounds_ns[0] for e in best)
    hi = min(e.bounds_ns[1] for e in best)
    if lo > hi:  # inconsistent (a clock stepped or drifted): trust the fastest exchange alone
        lo, hi = best[0].bounds_ns
    return ClockEstimate(
        offset_ns=(lo + hi) // 2,
        uncertainty_ns=(hi - lo + 1) // 2,
        round_trip_ns=best[0].round_trip_ns,
        exchanges=len(valid),
        kept=len(best),
    )


def apply_test_offset(environ: dict[str, str] | None = None) -> int:
    """Test hook: shift ``time.monotonic_ns`` of this process by ``TOKENBENCH_TEST_CLOCK_OFFSET_NS``.

    Why a patch of the ``time`` module: a worker on another host has a different
    clock for *everything* it stamps (records, schedules, pongs); shifting the one
    function they all call is what that looks like on loopback. Must run before
    the harness modules that keep a reference to the function are imported: the
    worker's Locust command runs it first (``worker.BOOTSTRAP``).
    Returns the offset applied (0: none).
    """
    raw = (os.environ if environ is None else environ).get(TEST_OFFSET_ENV, "")
    if not raw:
        return 0
    offset = int(raw)
    real = time.monotonic_ns

    def shifted() -> int:
        return real() + offset

    time.monotonic_ns = shifted
    return offset
