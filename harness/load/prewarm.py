"""Connection prewarm: every user opens and verifies its connection before the step's clock starts.

Why: at the start of a closed-loop step every user's first request pays a TCP
(and TLS) connect and waits in the server's accept queue. At 1,024 users that
burst is what TTFT's p99 measures, not steady-state serving. With
``connections: prewarm`` (the default) each user, in ``on_start``, opens its
keep-alive connection and proves it usable with the protocol's own readiness
request (``ProtocolSpec.readiness``: ``GET /v1/models`` for OpenAI servers,
``GET /health`` for TGI and Caikit; gRPC: the channel reaches READY). Then it
waits at this process's ``PrewarmBarrier`` until every user of the process has
done the same, and only then does the first request get admitted, which is
what starts the step's clock (``StepState.start``: closed-loop t0, or the
open-loop arrival pool's creation). Open loop is prewarmed too: its pool of
users holds connections just as closed-loop users do.

``connections: cold`` skips all of it, to measure the burst on purpose.

A user that cannot prewarm (refused, timed out, closed after the probe) is
counted and named in the step's health (``summarize_prewarm``); it does not
hang the step: the barrier opens at ``deadline_s`` whatever happened, and
such a user connects on its first request (which its record shows in
``connect_ns``).

This module imports gevent but not Locust.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event

MAX_ERRORS = 3  # distinct failure messages kept per process (the health report names them)
BARRIER_SLACK_S = 5.0  # the barrier's deadline past one user's own prewarm timeout


@dataclass
class PrewarmBarrier:
    """One process's users meet here; it opens when ``expected()`` have arrived or at the deadline.

    ``expected`` is read at every arrival (the Locust runner's target user
    count for this process: known before any user spawns). The deadline runs
    from the first arrival, so a slow spawn or a wrong count cannot hang the step.
    """

    expected: Callable[[], int]
    deadline_s: float
    now_ns: Callable[[], int] = time.monotonic_ns
    arrived: int = 0
    failures: int = 0
    late: int = 0  # users that finished prewarming after the barrier had opened
    errors: list[str] = field(default_factory=list)
    connect_ns: list[int] = field(default_factory=list)
    timed_out: bool = False
    first_ns: int | None = None
    opened_ns: int | None = None
    _open: Event = field(default_factory=Event)
    _timer: Any = None

    def begin(self) -> None:
        """A user starts prewarming: the first one starts the deadline."""
        if self.first_ns is None:
            self.first_ns = self.now_ns()
            self._timer = gevent.spawn_later(self.deadline_s, self._expire)

    def arrive(self, error: str | None, connect_ns: int | None) -> None:
        """A user is done prewarming (``error``: why it could not); opens the barrier on the last one."""
        self.begin()
        self.arrived += 1
        if connect_ns is not None:
            self.connect_ns.append(connect_ns)
        if error is not None:
            self.failures += 1
            if error not in self.errors and len(self.errors) < MAX_ERRORS:
                self.errors.append(error)
        if self._open.is_set():
            self.late += 1
        elif self.arrived >= self.expected():
            self.release()

    def wait(self) -> None:
        self._open.wait()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def release(self) -> None:
        if not self._open.is_set():
            self.opened_ns = self.now_ns()
            self._open.set()
        if self._timer is not None:
            self._timer.kill(block=False)
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self._open.is_set():
            self.timed_out = True
            self.release()

    def report(self) -> dict[str, Any]:
        """This process's prewarm, as plain data for its health report."""
        span = None
        if self.first_ns is not None and self.opened_ns is not None:
            span = (self.opened_ns - self.first_ns) / 1e9
        return {
            "users": self.arrived,
            "failures": self.failures,
            "late": self.late,
            "timed_out": self.timed_out,
            "prewarm_s": span,
            "errors": list(self.errors),
            "connect_ns": list(self.connect_ns),
        }


def prewarm_user(barrier: PrewarmBarrier, warm: Callable[[], tuple[str | None, int | None]]) -> None:
    """One user's part: run ``warm`` (its wire's prewarm), report to the barrier, wait for the others.

    ``warm`` returns why the connection is not usable (None: it is) and the
    connect time it measured (None when unknown). Any exception from it is a
    failure, never an escape: a user that raised in ``on_start`` would never
    run, and the barrier would wait for it until its deadline.
    """
    barrier.begin()
    try:
        error, connect_ns = warm()
    except Exception as err:  # noqa: BLE001 - whatever broke, the step goes on without this connection
        error, connect_ns = f"{type(err).__name__}: {err}"[:300], None
    barrier.arrive(error, connect_ns)
    barrier.wait()


def summarize_prewarm(reports: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """The step's prewarm figures from each process's report (``PrewarmBarrier.report``), for health.json."""
    parts = [r for r in reports if r]
    spans = [r["prewarm_s"] for r in parts if r.get("prewarm_s") is not None]
    connects = sorted(v for r in parts for v in r.get("connect_ns", []))
    errors: list[str] = []
    for r in parts:
        errors += [e for e in r.get("errors", []) if e not in errors]
    out: dict[str, Any] = {
        "connections": mode,
        "prewarm_users": int(sum(r.get("users", 0) for r in parts)),
        "prewarm_failures": int(sum(r.get("failures", 0) for r in parts)),
        "prewarm_s": max(spans) if spans else None,
        "prewarm_connect_max_ms": connects[-1] / 1e6 if connects else None,
        "prewarm_timed_out": any(r.get("timed_out") for r in parts),
        "prewarm_errors": errors[:MAX_ERRORS],
    }
    return out


def prewarm_reasons(health: dict[str, Any]) -> list[str]:
    """Why a prewarmed step's start may still hold connects: its users that could not prewarm."""
    reasons: list[str] = []
    failed = health.get("prewarm_failures") or 0
    if failed:
        first = (health.get("prewarm_errors") or ["?"])[0]
        reasons.append(
            f"{failed} of {health.get('prewarm_users', 0)} users could not prewarm their connection "
            f"({first}): their first requests connected inside the step"
        )
    if health.get("prewarm_timed_out"):
        reasons.append("the prewarm barrier opened at its deadline before every user had arrived")
    return reasons
