"""Seeded Poisson arrivals for open-loop load, and the per-process pacing that serves them.

Why a precomputed, seeded schedule: an open-loop benchmark must send requests
when the *schedule* says, not when the previous response came back, or slow
responses silently lower the offered load (coordinated omission). Drawing the
gaps from a seeded ``numpy.random.Generator`` makes a run reproducible: the same
scenario and seed offer the same arrival pattern to every server it compares.

With ``W`` Locust worker processes each runs its own Poisson process of rate
``rate / W``; the superposition of independent Poisson processes is a Poisson
process of the full rate, so no cross-process coordination is needed.

The pure functions (``poisson_arrivals``, ``derive_seed``, ``worker_share``)
have no gevent dependency. ``ArrivalPool`` is the gevent-side consumer: it hands
arrivals to idle users and keeps late ones in a backlog so that client-side
queueing is measured (latency runs from the scheduled time) rather than hidden.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_BLOCK = 4096


def derive_seed(seed: int, step_id: str, worker_index: int) -> int:
    """A stable 64-bit seed for one worker of one step.

    Hashing (not ``hash()``, which is salted per process) keeps the value equal
    across processes and runs, and distinct workers get independent streams.
    """
    blob = f"{seed}\x00{step_id}\x00{worker_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def worker_share(total: int, worker_index: int, workers: int) -> int:
    """Deterministic split of ``total`` items over ``workers``: the first ``total % workers`` get one more."""
    if workers < 1 or not 0 <= worker_index < workers:
        raise ValueError(f"worker_index {worker_index} out of range for {workers} workers")
    base, extra = divmod(total, workers)
    return base + (1 if worker_index < extra else 0)


def poisson_arrivals(
    rate: float,
    seed: int,
    *,
    start_ns: int = 0,
    count: int | None = None,
    horizon_s: float | None = None,
) -> Iterator[int]:
    """Arrival times (ns) of a Poisson process of ``rate`` per second, starting at ``start_ns``.

    The first arrival comes one exponential gap after ``start_ns`` (a Poisson
    process has no arrival pinned at zero). Stops after ``count`` arrivals or
    once an arrival would fall at or beyond ``start_ns + horizon_s``; with
    neither it is infinite. Gaps are drawn in blocks, so iterating is cheap.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = np.random.default_rng(seed)
    scale_ns = 1e9 / rate
    horizon_ns = None if horizon_s is None else start_ns + int(horizon_s * 1e9)
    emitted = 0
    acc = float(start_ns)
    while True:
        gaps = rng.exponential(scale_ns, _BLOCK)
        times = acc + np.cumsum(gaps)
        acc = float(times[-1])
        for t in times.tolist():
            if count is not None and emitted >= count:
                return
            ns = int(t)
            if horizon_ns is not None and ns >= horizon_ns:
                return
            emitted += 1
            yield ns


@dataclass
class ArrivalPool:
    """Hands scheduled arrivals to a pool of users (one process, gevent).

    A dispatcher greenlet walks the schedule and, at each arrival time, gives
    the arrival to the most recently idled user (LIFO, so warm keep-alive
    connections are reused). If every user is busy the arrival goes to a FIFO
    backlog and the next user to finish takes it at once; its latency still
    counts from the scheduled time, so the queueing is visible.

    ``keep(scheduled_ns)`` decides whether an arrival is issued at all (the stop
    rule: duration or request quota); the first refused arrival ends the
    schedule for this process. With a ``deadline_ns`` (duration mode), arrivals
    still in the backlog at the deadline are dropped and reported through
    ``on_drop``: an overloaded pool must not stretch a 60 s step into minutes,
    and the count tells the reader the client could not offer the asked rate.
    """

    arrivals: Iterator[int]
    keep: Callable[[int], bool]
    now_ns: Callable[[], int] = time.monotonic_ns
    deadline_ns: int | None = None
    on_drop: Callable[[int], None] | None = None
    _idle: list[Any] = field(default_factory=list)
    _backlog: deque[int] = field(default_factory=deque)
    _finished: bool = False
    _greenlet: Any = None

    def start(self) -> None:
        import gevent

        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._dispatch)

    @property
    def finished(self) -> bool:
        """True once the schedule is exhausted and the backlog drained."""
        return self._finished and not self._backlog

    def next_arrival(self) -> int | None:
        """Block until this user is given an arrival; ``None`` means the schedule is over."""
        from gevent.event import AsyncResult

        if self._backlog:
            return self._backlog.popleft()
        if self._finished:
            return None
        slot: AsyncResult = AsyncResult()
        self._idle.append(slot)
        return slot.get()

    def stop(self) -> None:
        """End the schedule now (shutdown): idle users are released with ``None``."""
        self._finish()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _finish(self) -> None:
        self._finished = True
        while self._idle:
            self._idle.pop().set(None)

    def _dispatch(self) -> None:
        import gevent

        for scheduled in self.arrivals:
            if not self.keep(scheduled):
                break
            wait_s = (scheduled - self.now_ns()) / 1e9
            if wait_s > 0:
                gevent.sleep(wait_s)
            if self._idle:
                self._idle.pop().set(scheduled)
            else:
                self._backlog.append(scheduled)
        if self.deadline_ns is not None:
            wait_s = (self.deadline_ns - self.now_ns()) / 1e9
            if wait_s > 0:
                gevent.sleep(wait_s)
            if self._backlog and self.on_drop is not None:
                dropped = len(self._backlog)
                self._backlog.clear()
                self.on_drop(dropped)
        self._finish()
