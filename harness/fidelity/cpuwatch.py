"""Where the machine's CPU went during a fidelity step's measured window, by kind of work.

Why: at 1,024 streams on a 2-core machine three kinds of work share the
cores: the truth server (``SCHED_FIFO``), the native reader threads of the
Locust processes (``SCHED_FIFO``, below it; nearly all of their time is the
kernel's TCP receive and ACK path) and the Locust processes' Python threads,
which get what the first two leave. When the Python side falls behind,
streams sit idle and the in-flight target is missed. The CPU-seconds a step
reports per process include start-up and the drain after the last send, so
they cannot say whether the Python threads were short of CPU *while the load
ran*. This watcher is handed a sample at every turn of the fidelity step's
process watcher (every 0.2 s, with the Locust processes it found) and keeps
the cumulative CPU time of each kind (per thread, from ``/proc/<pid>/task/*/stat``) and the machine's
idle and steal time (``/proc/stat``), and averages each over the measured
window: cores in use by each kind, so a miss says where the time went.

The reader threads are told apart by the name the reader gives them
(``READER_THREAD_NAME``, set in ``nativeread.c``). Linux only; elsewhere (no
``/proc``) the figures are None. Ticks are ``USER_HZ`` (10 ms), so over a
10-second window each figure is good to about 0.01 core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

READER_THREAD_NAME = "tb-reader"  # nativeread.c: pthread_setname_np
KINDS = ("truth_server", "reader_threads", "locust_python")
PROC = Path("/proc")


def _ticks_per_s() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def parse_thread_stat(text: str) -> tuple[str, int]:
    """(name, utime + stime in ticks) from one ``/proc/<pid>/task/<tid>/stat`` line.

    The name sits between the first ``(`` and the *last* ``)``: it may hold
    spaces and parentheses itself. utime and stime are fields 14 and 15.
    """
    open_, close = text.index("("), text.rindex(")")
    rest = text[close + 2 :].split()
    return text[open_ + 1 : close], int(rest[11]) + int(rest[12])


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """(busy, idle, steal) ticks of all CPUs from ``/proc/stat``'s first line.

    idle counts iowait too; busy is user + nice + system + irq + softirq (guest
    time is inside user already).
    """
    v = [int(x) for x in text.split("\n", 1)[0].split()[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return user + nice + system + irq + softirq, idle + iowait, steal


@dataclass
class Sample:
    """Cumulative CPU seconds at one moment (``t``: ``time.monotonic()``)."""

    t: float
    kinds: dict[str, float]
    busy: float
    idle: float
    steal: float


@dataclass
class CpuWatcher:
    """The truth server's and the Locust processes' threads, and the machine, sample by sample.

    ``truth_pid``: the truth server's process. The caller samples (``sample``)
    with the pids of the Locust processes it found. A thread that exits
    keeps the last CPU time it was seen with, so each kind's total never
    goes down.
    """

    truth_pid: int | None
    samples: list[Sample] = field(default_factory=list)
    _last: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)

    def _threads(self, pid: int, kind_of: Callable[[str], str]) -> None:
        for task in (PROC / str(pid) / "task").glob("*"):
            try:
                name, ticks = parse_thread_stat((task / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # exited between listing and reading
            self._last[(pid, int(task.name))] = (kind_of(name), ticks)

    def sample(self, locust_pids: Sequence[int]) -> None:
        """Take one sample now; nothing where there is no ``/proc`` (not Linux)."""
        t = time.monotonic()
        if self.truth_pid is not None:
            self._threads(self.truth_pid, lambda _name: "truth_server")
        for pid in locust_pids:
            self._threads(
                pid, lambda name: "reader_threads" if name == READER_THREAD_NAME else "locust_python"
            )
        try:
            busy, idle, steal = parse_proc_stat((PROC / "stat").read_text())
        except (OSError, ValueError):
            return
        hz = _ticks_per_s()
        kinds = dict.fromkeys(KINDS, 0.0)
        for kind, ticks in self._last.values():
            kinds[kind] += ticks / hz
        self.samples.append(Sample(t, kinds, busy / hz, idle / hz, steal / hz))


def _at(samples: list[Sample], t: float, get: Callable[[Sample], float]) -> float:
    """A cumulative figure at time ``t``, linear between the samples either side."""
    for a, b in zip(samples, samples[1:], strict=False):
        if a.t <= t <= b.t:
            span = b.t - a.t
            w = 0.0 if span <= 0 else (t - a.t) / span
            return get(a) + w * (get(b) - get(a))
    raise ValueError(f"t={t} is outside the samples")


def window_cores(samples: list[Sample], start_s: float, end_s: float) -> dict[str, float | None]:
    """Mean cores used by each kind (and the machine's other busy, idle and steal) over [start_s, end_s].

    None for every figure where the samples do not cover the window or it is
    empty. ``other`` is the machine's busy time less the three kinds (this
    orchestrator, kernel threads, anything else running).
    """
    names = (*KINDS, "other", "idle", "steal")
    span = end_s - start_s
    if len(samples) < 2 or span <= 0 or start_s < samples[0].t or end_s > samples[-1].t:
        return dict.fromkeys(names, None) | {"window_s": None}
    out: dict[str, float | None] = {"window_s": round(span, 3)}

    def mean(get: Callable[[Sample], float]) -> float:
        return (_at(samples, end_s, get) - _at(samples, start_s, get)) / span

    for kind in KINDS:
        out[kind] = round(mean(lambda s, k=kind: s.kinds[k]), 3)
    busy = mean(lambda s: s.busy)
    out["other"] = round(max(0.0, busy - sum(out[k] or 0.0 for k in KINDS)), 3)
    out["idle"] = round(mean(lambda s: s.idle), 3)
    out["steal"] = round(mean(lambda s: s.steal), 3)
    return out
