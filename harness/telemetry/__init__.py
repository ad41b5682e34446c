"""Telemetry: server memory, GPU and ``/metrics`` time series sampled during a cell.

The probes (``process_mem``, ``gpu``, ``prometheus``) each return ``Sample``
values; ``sampler.TelemetrySampler`` stamps them with the cell, the current
load step and ``time.monotonic_ns()`` (the clock request records use), and
``summary.memory_summary`` reduces them to the numbers in ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One value from a probe, before it is stamped with time, cell and step."""

    name: str
    value: float
    labels: str = ""
