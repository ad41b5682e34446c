"""Connect-time figures of a step's measured requests, for its harness-health block.

Why from the records and not from health.json: every request records whether
it opened a connection (``reused_connection``) and how long that took
(``connect_ns``), so the figures are those of exactly the measured window,
recomputable from ``records.parquet`` like every other metric. With
``connections: prewarm`` a connect inside the window means the server closed
a kept connection (or a user could not prewarm): those requests paid a
connect the others did not, so the step says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

NS_PER_MS = 1e6


def connect_figures(measured: pd.DataFrame) -> dict[str, Any]:
    """``connects`` and connect-time p50/p99/max (ms) of ``measured``; empty for records without them."""
    if "reused_connection" not in measured.columns:
        return {}
    reused = measured["reused_connection"]
    known = reused.notna().to_numpy()
    if not known.any():
        return {}  # written before connects were recorded: unknown, not zero
    out: dict[str, Any] = {"connects": int((~reused[known].astype(bool)).sum())}
    column = measured["connect_ns"] if "connect_ns" in measured.columns else pd.Series(dtype="float64")
    ns = pd.to_numeric(column, errors="coerce").dropna().to_numpy(dtype="float64")
    if ns.size:
        p50, p99 = np.percentile(ns, [50, 99], method="linear")
        out.update(
            connect_p50_ms=float(p50) / NS_PER_MS,
            connect_p99_ms=float(p99) / NS_PER_MS,
            connect_max_ms=float(ns.max()) / NS_PER_MS,
        )
    return out


def with_connects(health: Mapping[str, Any] | None, measured: pd.DataFrame) -> dict[str, Any]:
    """The load layer's health with the records' connect figures, and a reason for connects a prewarm left."""
    merged: dict[str, Any] = {**(health or {}), **connect_figures(measured)}
    connects = merged.get("connects") or 0
    if merged.get("connections") == "prewarm" and connects:
        merged["reasons"] = [
            *merged.get("reasons", []),
            f"{connects} measured requests opened a connection despite the prewarm "
            "(the server closed kept connections, or users could not prewarm): their latency includes it",
        ]
    return merged
