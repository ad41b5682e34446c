"""Turning finished streams into records off the read path, one at a time.

Why: interpreting a 128-token stream (event split, JSON, record) costs a few
hundred microseconds. In closed loop, streams with the same timing end
together; when each user did that work itself before sending its next
request, a burst of 100 ending streams blocked the event loop for tens of
milliseconds, so every other stream's reads (and the next requests) were
stamped late (issue 3: TTFT and ITL p99 errors at 256 streams). Here a user
only queues its finished stream and sends its next request at once; one
greenlet per process does the interpretation, one stream at a time, and
only when the event loop has nothing else pending (``gevent.idle``), so a
burst of reads is stamped before any interpretation starts. Should the
client be saturated (idle never comes), the queue would grow without bound;
past ``IDLE_BACKLOG`` queued streams, or ``IDLE_BACKLOG_BYTES`` of queued
response bodies (a few large responses weigh more than hundreds of small
ones), the finisher instead takes one stream per loop turn, so memory stays
bounded and reads still wait at most one job: it goes on when the loop is
idle or after ``YIELD_S``, whichever comes first (``_idle_or``).

Nothing is lost at shutdown: ``drain`` runs whatever is queued, and the
process ships its records only after that.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.hub import Waiter

# Under backlog, yield with a (tiny) timer rather than sleep(0): sleep(0) may
# resume this greenlet before the loop polls for I/O, and letting it poll is
# the whole point of yielding.
YIELD_S = 0.00005
IDLE_BACKLOG = 512
IDLE_BACKLOG_BYTES = 32 * 2**20

log = logging.getLogger(__name__)


def _idle_or(timeout_s: float) -> None:
    """Back when the event loop is idle, or after ``timeout_s`` if it never is.

    Why both: the timer alone (libev's resolution is a millisecond) left the
    loop idle for a millisecond between jobs whenever nothing else was
    pending, so a backlog drained at a third of a core with the rest of the
    machine idle: 15 s after the last send of a 1,024-stream step. The idle
    watcher returns at once then; under a busy loop it never fires and the
    timer keeps the queue moving, one job per turn, as before.
    """
    loop = gevent.get_hub().loop
    waiter: Waiter[None] = Waiter()
    idle, timer = loop.idle(), loop.timer(timeout_s)
    idle.start(waiter.switch, None)
    timer.start(waiter.switch, None)
    try:
        waiter.get()
    finally:
        idle.stop()
        timer.stop()
        idle.close()
        timer.close()


class Finisher:
    """A FIFO of no-argument jobs run by one greenlet, yielding to the event loop between jobs."""

    def __init__(self) -> None:
        self._jobs: deque[tuple[Callable[[], None], int]] = deque()
        self._queued_bytes = 0
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self.done = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, job: Callable[[], None], size: int = 0) -> None:
        """Queue ``job`` (holding ``size`` bytes of response); it runs after every job queued before it."""
        self._jobs.append((job, size))
        self._queued_bytes += size
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        self._wake.set()

    def drain(self) -> None:
        """Run every queued job now, in order (shutdown, or a caller that needs the records)."""
        while self._jobs:
            self._one()

    def _one(self) -> None:
        job, size = self._jobs.popleft()
        self._queued_bytes -= size
        self.done += 1
        try:
            job()
        except Exception:  # one bad stream must not stop the records of all the others
            log.exception("tokenbench: failed to turn a finished stream into a record")

    def _run(self) -> None:
        while True:
            if not self._jobs:
                self._wake.clear()
                self._wake.wait()
                continue
            if len(self._jobs) > IDLE_BACKLOG or self._queued_bytes > IDLE_BACKLOG_BYTES:
                _idle_or(YIELD_S)
            else:
                gevent.idle()
            if self._jobs:  # drain() may have emptied the queue meanwhile
                self._one()
