"""Requests in flight over a window, and how much of a closed-loop step's concurrency the client held.

Why check a closed loop at all: each of its N users sends the next request
when the previous response ends, and the time between (the end reaching the
client, the client's reaction, the send) is time that user holds nothing open
at the server. A client that falls behind (a starved event loop that cannot
hand the reader thread its next requests in time) lowers the server's real
load below N without a single request failing, and every latency and
throughput figure of the step is then that of a lighter load. The fidelity
benchmark measures this against the server's own log (``server_in_flight``);
here it is measured from the records alone, so every run's report says it.

What is measured: the time-average number of requests open (``sent_ns`` →
``end_ns``) between the step's first and last measured send, over N. The tail
after the last send is left out: there users finish and the load falls by
design. Below ``HELD_LIMIT`` the step gets a reason (not the ``limited`` flag,
which stays the event loop's: the gap may as well be the network's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

HELD_LIMIT = 0.975


def mean_in_flight(sent_ns: np.ndarray, end_ns: np.ndarray, window: tuple[int, int]) -> float | None:
    """Time-average number of outstanding requests over ``window`` (sent → end intervals).

    Equals the sum of each interval's overlap with the window divided by the
    window length (Little's law, measured rather than assumed).
    """
    start, stop = window
    if stop <= start:
        return None
    lo = np.clip(np.asarray(sent_ns, dtype="int64"), start, stop)
    hi = np.clip(np.asarray(end_ns, dtype="int64"), start, stop)
    return float(np.sum(np.maximum(hi - lo, 0)) / (stop - start))


def _stamps(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The (sent_ns, end_ns) pairs of ``frame`` that have both, as int64 (no float round trip)."""
    if len(frame) == 0 or "sent_ns" not in frame.columns or "end_ns" not in frame.columns:
        return np.empty(0, "int64"), np.empty(0, "int64")
    both = frame[["sent_ns", "end_ns"]].dropna().to_numpy(dtype="int64")
    return both[:, 0], both[:, 1]


def held_fraction(measured: pd.DataFrame, target: float, warmup: pd.DataFrame | None = None) -> float | None:
    """Mean requests open between the first and last measured send, over ``target``; None if unmeasurable.

    ``warmup``: the step's warm-up records. Their requests still open when the
    window starts count too: the server had them, and in closed loop every
    user's first measured send follows its last warm-up response.
    """
    if target <= 0:
        return None
    sent, end = _stamps(measured)
    if sent.size < 2:
        return None
    window = (int(sent.min()), int(sent.max()))
    if warmup is not None:
        w_sent, w_end = _stamps(warmup)
        sent, end = np.concatenate([sent, w_sent]), np.concatenate([end, w_end])
    held = mean_in_flight(sent, end, window)
    return None if held is None else held / target


def with_held(
    health: Mapping[str, Any],
    measured: pd.DataFrame,
    kind: str,
    target: float,
    warmup: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """``health`` with a closed-loop step's ``held_fraction``, and a reason when it is under ``HELD_LIMIT``."""
    if kind != "concurrency":
        return dict(health)
    frac = held_fraction(measured, target, warmup)
    merged: dict[str, Any] = {**health, "held_fraction": frac}
    if frac is not None and frac < HELD_LIMIT:
        merged["reasons"] = [
            *merged.get("reasons", []),
            f"the {target:g} users held {100 * frac:.1f}% of their requests open on average between the "
            f"first and last measured send (under {100 * HELD_LIMIT:g}%): the server saw less load than "
            "asked for; the rest is the time from a response's end to that user's next send "
            "(network, and a client that fell behind)",
        ]
    return merged
