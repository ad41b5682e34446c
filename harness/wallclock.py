"""The run's wall-clock anchor: the UTC time at which ``time.monotonic_ns()`` read zero.

Why: every record, telemetry sample and simulator log line is stamped with
the monotonic clock (system-wide on Linux, immune to NTP steps), which means
nothing outside this host. Prometheus, Grafana and server logs speak UTC. The
run reads both clocks together once, when it starts, and keeps the
difference in ``summary.json`` (``clock``): ``utc = monotonic_zero_utc +
record_ns``. The derived per-request table (``records.parquet``,
``records.csv``) carries the converted ``start_utc``/``end_utc`` columns.

What it does not cover: a wall-clock step during the run shifts the mapping
by that step, and a run resumed after a reboot has a new monotonic zero
(its anchor is the first attempt's).
"""

from __future__ import annotations

import datetime as dt
import time

from harness.results import ClockAnchor


def read_clock_anchor(tries: int = 5) -> ClockAnchor:
    """Both clocks now: ``time.time_ns()`` bracketed by two monotonic reads, the tightest of ``tries``."""
    best: tuple[int, int] | None = None
    for _ in range(max(1, tries)):
        m0 = time.monotonic_ns()
        wall = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, wall - (m0 + m1) // 2)
    assert best is not None
    spread, offset = best
    return ClockAnchor(
        monotonic_zero_utc=utc_text(offset),
        wall_minus_monotonic_ns=offset,
        uncertainty_ns=(spread + 1) // 2,
    )


def utc_text(unix_ns: int) -> str:
    """A Unix time in ns as ISO 8601 UTC with microseconds (``2026-01-02T03:04:05.123456Z``)."""
    stamp = dt.datetime.fromtimestamp(unix_ns // 1000 / 1e6, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
