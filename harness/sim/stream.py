"""Drive one streamed response: write each chunk at its absolute due time.

Why timer callbacks and not one coroutine per stream: a ``call_later``
callback costs about a microsecond on uvloop, a task wake-up several; at
thousands of concurrent streams that difference is the sim's ceiling.

Loop timers have millisecond granularity and may fire early, so a callback
that wakes more than ``EARLY_NS`` (0.1 ms) before its due time re-arms instead
of writing. A chunk is therefore at most 0.1 ms early (busy re-arming closer
than that would burn the CPU the client needs) and usually well under 1 ms
late; the write log records when it really went out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from harness.sim.generation import StreamFormat
from harness.sim.httpconn import Connection
from harness.sim.writelog import WriteLog

EARLY_NS = 100_000


class StreamJob:
    """Writes ``sizes[i]`` tokens at ``due_ns[i]``; injects mid-stream faults at chunk ``len // 2``."""

    __slots__ = (
        "conn",
        "fmt",
        "sizes",
        "due_ns",
        "request_id",
        "log",
        "fault",
        "on_end",
        "i",
        "sent",
        "handle",
        "cancelled",
        "loop",
        "mid",
        "ok_note",
    )

    def __init__(
        self,
        conn: Connection,
        fmt: StreamFormat,
        sizes: list[int],
        due_ns: list[int],
        request_id: str,
        log: WriteLog,
        fault: str | None,
        on_end: Callable[[str, int], None],
        ok_note: str = "ok",
    ) -> None:
        self.ok_note = ok_note
        self.conn = conn
        self.fmt = fmt
        self.sizes = sizes
        self.due_ns = due_ns
        self.request_id = request_id
        self.log = log
        self.fault = fault
        self.on_end = on_end
        self.i = 0
        self.sent = 0
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self.cancelled = False
        self.loop = asyncio.get_running_loop()
        self.mid = len(sizes) // 2

    def start(self) -> None:
        self.conn.on_lost.append(self.cancel)
        self._arm()

    def cancel(self) -> None:
        """The client went away: stop writing and record how far we got."""
        if self.cancelled:
            return
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
        self.log.gone(self.request_id, self.i, self.sent, time.monotonic_ns())
        self.on_end("client_gone", self.sent)

    def _arm(self) -> None:
        delay = self.due_ns[self.i] - time.monotonic_ns()
        if delay <= 0:
            self.handle = self.loop.call_soon(self._fire)
        else:
            self.handle = self.loop.call_later(delay / 1e9, self._fire)

    def _fire(self) -> None:
        if self.cancelled:
            return
        i = self.i
        if self.due_ns[i] - time.monotonic_ns() > EARLY_NS:
            self._arm()
            return
        n = len(self.sizes)
        count = self.sizes[i]
        last = i == n - 1
        conn = self.conn
        if i == self.mid and self.fault == "malformed_sse":
            conn.stream_chunk(self.fmt.malformed())
        data = self.fmt.chunk(self.sent, count, i == 0, last)
        if last:
            conn.end_stream(data + self.fmt.tail())
        else:
            conn.stream_chunk(data)
        t = time.monotonic_ns()
        self.log.chunk(self.request_id, i, count, t)
        self.sent += count
        self.i = i + 1
        if i == self.mid and self.fault == "disconnect_mid_stream" and not last:
            self._finish("disconnect_mid_stream", t)
            conn.keep_alive = False
            conn.close()
            return
        if last:
            self._finish(self.fault or self.ok_note, t)
            return
        self._arm()

    def _finish(self, note: str, t: int) -> None:
        self.cancelled = True
        try:
            self.conn.on_lost.remove(self.cancel)
        except ValueError:
            pass
        self.log.end(self.request_id, self.i, self.sent, t, note)
        self.on_end(note, self.sent)
