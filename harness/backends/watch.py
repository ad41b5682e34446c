"""Noticing, during a step, that the server under test has died.

Why: a server that crashes mid-step (OOM, a CUDA error, a segfault) used to
go unnoticed: the step recorded ~120k instant ``connect`` errors, the next
step ran against the dead port, and the cell was "ok" with exit code 0. The
load runner polls a ``ServerWatch`` while Locust runs; a death stops the step
(its records so far are kept), fails the cell with the server's log tail and
skips the cell's remaining steps.

Launched servers are watched by process: every root pid of the server (a
Caikit cell has two) must stay alive. External servers have no process here,
so they are watched through a health URL, where the handle has one, and only
declared dead after ``HEALTH_FAILURES`` failures in a row (a busy server may
miss one probe).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import psutil

HEALTH_INTERVAL_S = 2.0
HEALTH_FAILURES = 3


class ServerDied(RuntimeError):
    """The server stopped during a step; ``str()`` says which process or probe and how."""


@dataclass
class ServerWatch:
    """Polled by the load runner; :meth:`check` returns why the server is gone, or None."""

    pids: dict[str, int] = field(default_factory=dict)  # role -> root pid
    health_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    _failures: int = 0
    _next_probe: float = 0.0

    def check(self) -> str | None:
        for role, pid in self.pids.items():
            reason = _process_gone(pid)
            if reason is not None:
                return f"{role} process {pid} {reason}"
        if self.health_url is not None and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + HEALTH_INTERVAL_S
            error = _probe(self.health_url, self.headers)
            self._failures = self._failures + 1 if error else 0
            if self._failures >= HEALTH_FAILURES:
                return f"{self.health_url} failed {self._failures} times in a row (last: {error})"
        return None


def _process_gone(pid: int) -> str | None:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "exited"
    except psutil.NoSuchProcess:
        return "exited"
    except psutil.Error:
        return None
    return None


def _probe(url: str, headers: dict[str, str]) -> str | None:
    try:
        response = httpx.get(url, headers=headers, timeout=httpx.Timeout(2.0, connect=1.0))
    except httpx.HTTPError as err:
        return f"{type(err).__name__}"
    return None if response.status_code < 500 else f"HTTP {response.status_code}"
