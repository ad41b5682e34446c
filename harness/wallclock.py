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

from harness.results import ClockAnchor
from harness.telemetry.clock import ClockMap


def read_clock_anchor(tries: int = 5) -> ClockAnchor:
    """Both clocks now (:meth:`ClockMap.read`, the tightest bracket of ``tries``), as the run's anchor."""
    pair = ClockMap.read(tries)
    return ClockAnchor(
        monotonic_zero_utc=utc_text(pair.wall_minus_monotonic_ns),
        wall_minus_monotonic_ns=pair.wall_minus_monotonic_ns,
        uncertainty_ns=pair.uncertainty_ns,
    )


def utc_text(unix_ns: int) -> str:
    """A Unix time in ns as ISO 8601 UTC with microseconds (``2026-01-02T03:04:05.123456Z``)."""
    stamp = dt.datetime.fromtimestamp(unix_ns // 1000 / 1e6, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
