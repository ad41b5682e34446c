"""The native stream reader from Python: hand a socket's response to the reader thread, wait, get the reads.

Why: see ``nativeread.c``. In short, a read stamped by a thread that never
waits for the GIL or the event loop is stamped when the bytes arrive, however
busy the Locust process is with sending requests and interpreting finished
streams, and the loop no longer pays a hub switch, a greenlet switch and a
``recv`` per chunk.

The contract with ``httpstream``: ``NativeReader.read`` returns the raw
bytes of every ``recv`` with its ``CLOCK_MONOTONIC`` stamp (the clock of
``time.monotonic_ns``) and why reading stopped. ``httpstream`` replays those
reads through the same HTTP parser and SSE splitter as its Python path, and
if that parser does not agree the response is over, it goes on reading the
socket itself: the C side only ever decides *when to stop reading*, never
what a response means.

One reader per Locust process, made by the locustfile (``open_reader``) and
closed at the end; a build failure or an unusable platform leaves the process
on the Python path, with the reason kept for the step's health report.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from gevent.hub import Waiter

from harness.cbuild import CBuildError, build_shared
from harness.placement import available_cpus

SOURCE = Path(__file__).with_name("nativeread.c")
MAX_FDS = 65536
READER_NICE = -10  # asked for the reader thread alone where SCHED_FIFO is not granted (see nativeread.c)
SCHED_ENV = "TOKENBENCH_READER_SCHED"  # fifo (default) | nice | normal: the reader thread's scheduling
SCHED_CHOICES = {"normal": 0, "nice": 1, "fifo": 2}
SCHED_DEFAULT = "fifo"  # why, and what it costs: nativeread.c (run) and docs/metrics.md
POP_BATCH = 256
CHAIN_MAX = 4  # requests a connection may have armed ahead (nativeread.c CHAIN_MAX)
# With the kernel's receive stamps the thread sleeps this long after each batch of reads (nativeread.c):
# a response's end, and a chained send, wait up to this; the stamps do not. 0: wake on every segment.
POLL_US = 500.0
POLL_ENV = "TOKENBENCH_READER_POLL_US"
MAX_POLL_US = 100_000.0
THREADS_ENV = "TOKENBENCH_READER_THREADS"  # reader threads per process (a socket's fd picks one)
MAX_THREADS = 8
STREAMS_PER_THREAD = 512  # by default, a thread per 512 of the process's streams, up to its cores

# why reading stopped (nativeread.c R_*)
COMPLETE, EOF, ERROR, FRAMING, TOO_LARGE, CANCELLED = 1, 2, 3, 4, 5, 6


@dataclass
class Reads:
    """One response as the reader thread saw it.

    The offsets and stamps stay numpy arrays (no Python int per read: a
    1,024-stream step makes 80k of them a second); ``raw`` gives bytes of the
    response as read, for the HTTP parser.
    """

    result: int
    errno: int
    data: np.ndarray  # uint8: every byte read, in order (a TOO_LARGE response: its head only)
    ends: np.ndarray  # int64: end offset of each recv in ``data``
    stamps: np.ndarray  # int64: monotonic ns of each read's arrival (kernel stamp; else right after the recv)
    body: bytes = b""  # the body with the chunk framing removed, as the HTTP parser would hand it over
    body_ends: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # body length after a read
    body_stamps: np.ndarray = field(
        default_factory=lambda: np.empty(0, np.int64)
    )  # ... and that read's stamp
    head_len: int = 0  # end of the final (non-1xx) response head in ``data``; 0: not seen
    consumed: int = 0  # bytes of ``data`` the framing took (past it: bytes after the response)
    term_start: int = 0  # chunked: start of the last-chunk line in ``data``
    chunked: bool = False
    size: int = 0  # bytes read in all (``len(data)`` but where only the head was kept)

    def raw(self, start: int, end: int) -> bytes:
        return self.data[start:end].tobytes()


class NativeReader:
    """The process's reader threads (``nativeread.c``) and the gevent side that wakes waiting users.

    Each thread is a handle of its own (epoll set, done queue, eventfd); a
    socket belongs to thread ``fd % threads`` for as long as it is open. Why
    more than one: a read costs the thread ~10 µs on a 2-core VM, ~90 % of it
    the kernel sending the ACK and, over loopback, taking it in for the
    server; at 1,024 streams × 100 tokens/s one thread needed 0.95 of a core
    and fell behind, and a read that comes late returns every chunk queued
    meanwhile under the last one's stamp (stamp-lag p99 10 ms).
    """

    def __init__(
        self,
        library: Path,
        max_fds: int = MAX_FDS,
        sched: str = SCHED_DEFAULT,
        poll_us: float = POLL_US,
        threads: int = 1,
    ) -> None:
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"{THREADS_ENV}: expected 1 to {MAX_THREADS}, got {threads!r}")
        if sched not in SCHED_CHOICES:
            raise ValueError(f"{SCHED_ENV}: expected one of {sorted(SCHED_CHOICES)}, got {sched!r}")
        if not 0 <= poll_us <= MAX_POLL_US:  # nanosleep takes under a second; past that, ends wait too long
            raise ValueError(f"{POLL_ENV}: expected 0 to {MAX_POLL_US:g} µs, got {poll_us!r}")
        lib = ctypes.CDLL(str(library))
        lib.tbr_new.restype = ctypes.c_void_p
        lib.tbr_new.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
        vp, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        lib.tbr_eventfd.argtypes = [vp]
        lib.tbr_nice.argtypes = [vp]
        lib.tbr_fifo.argtypes = [vp]
        lib.tbr_cpu_ns.argtypes = [vp]
        lib.tbr_cpu_ns.restype = ctypes.c_int64
        lib.tbr_watch.argtypes = [vp, i, i64, i64]
        lib.tbr_cancel.argtypes = [vp, i]
        lib.tbr_pop_done.argtypes = [vp, ctypes.c_void_p, i]
        lib.tbr_info.argtypes = [vp, i, ctypes.c_void_p]
        lib.tbr_take.argtypes = [vp, i, i64, *([ctypes.c_void_p] * 6)]
        lib.tbr_close.argtypes = [vp]
        lib.tbr_arm.argtypes = [vp, i, ctypes.c_char_p, i64, i64]
        lib.tbr_chain.argtypes = [vp, i, ctypes.c_void_p]
        lib.tbr_pending.argtypes = [vp, i]
        lib.tbr_drop.argtypes = [vp, i]
        lib.tbr_stamps.argtypes = [vp, ctypes.c_void_p]
        self._lib = lib
        self._hs: list[int] = []
        for _ in range(threads):
            handle = lib.tbr_new(max_fds, SCHED_CHOICES[sched], READER_NICE, int(poll_us * 1000))
            if not handle:
                self.close()
                raise OSError("the native reader could not start (epoll, eventfd or thread)")
            self._hs.append(handle)
        self.threads = threads
        nices = [int(lib.tbr_nice(h)) for h in self._hs]  # each waits for its thread to start
        self.nice = nices[0]  # the threads' share, for the health report
        self.fifo = all(lib.tbr_fifo(h) for h in self._hs)
        # Responses taken whole from the thread (the common case) and those replayed read by read
        # (errors, closes, deadlines, or a framing the parser judged otherwise): counted by nativehttp.
        self.whole = 0
        self.replayed = 0
        self._waiters: dict[int, Waiter] = {}
        self.clock_offset_ns = python_clock_offset()
        self._done = (ctypes.c_int * POP_BATCH)()
        self._info = (ctypes.c_int64 * 10)()
        self._chain = (ctypes.c_int64 * 2)()
        self.chain_sends = 0  # requests the thread sent itself on a response's end (closed loop)
        hub = gevent.get_hub()
        self._watchers = []
        for h in self._hs:
            watcher = hub.loop.io(lib.tbr_eventfd(h), 1)
            watcher.start(self._on_done, h)
            self._watchers.append(watcher)

    def _of(self, fd: int) -> int:
        """The handle of the thread that reads fd."""
        return self._hs[fd % self.threads]

    def _on_done(self, h: int) -> None:
        """In the hub: wake the user of every finished response (``tbr_pop_done`` drops stale entries)."""
        lib, done = self._lib, self._done
        while True:
            n = lib.tbr_pop_done(h, done, POP_BATCH)
            for k in range(n):
                waiter = self._waiters.pop(done[k], None)
                if waiter is not None:
                    waiter.switch(None)
            if n < POP_BATCH:
                return

    def read(
        self, fd: int, max_bytes: int, max_reads: int, chains: Sequence[tuple[bytes, int]] = ()
    ) -> Reads:
        """Block this greenlet until fd's response is over (or the caller's ``gevent.Timeout`` fires).

        ``chains``: the user's next requests with their deadlines, queued in
        order after any already armed: the thread sends the oldest the moment
        a response is complete, unless ``time.monotonic_ns()`` has reached its
        deadline by then (``chain_result`` says whether it did). On a timeout
        the thread stops reading fd and what it had read is kept on the
        exception (``partial``) so the caller can keep it.
        """
        for request, deadline_ns in chains:
            self._arm(fd, request, deadline_ns)
        rc = self._lib.tbr_watch(self._of(fd), fd, max_bytes, max_reads)
        if rc != 0:
            raise OSError(-rc, f"native reader: cannot watch fd {fd}: {os.strerror(-rc)}")
        return self._wait(fd)

    def attach(self, fd: int, chains: Sequence[tuple[bytes, int]] = ()) -> Reads:
        """``read`` for the response of a request the thread sent itself (``chain_result``): it is read already."""
        for request, deadline_ns in chains:
            self._arm(fd, request, deadline_ns)
        rc = self._lib.tbr_pending(self._of(fd), fd)
        if rc < 0:
            raise OSError(errno.EBADF, f"native reader: fd {fd} has no chained response")
        return self._take(fd) if rc else self._wait(fd)

    def chain_result(self, fd: int) -> tuple[int, int] | None:
        """Whether the thread sent fd's oldest chained request: (sent_ns, bytes it sent), or None.

        Sent: it leaves the queue. None: neither it nor any armed after it was
        sent, and the queue is disarmed. A failed send is (stamp, 0): the user
        sends the whole request and meets the error itself.
        """
        out = self._chain
        if not self._lib.tbr_chain(self._of(fd), fd, out):
            return None
        self.chain_sends += 1
        return out[0] + self.clock_offset_ns, out[1]

    def drop(self, fd: int) -> None:
        """Forget fd before its socket closes: a chained response being read, a parked one, the chain."""
        if self._hs:
            self._lib.tbr_drop(self._of(fd), fd)

    def _arm(self, fd: int, chain: bytes, deadline_ns: int) -> None:
        rc = self._lib.tbr_arm(self._of(fd), fd, chain, len(chain), deadline_ns - self.clock_offset_ns)
        if rc != 0:
            raise OSError(-rc, f"native reader: cannot arm fd {fd}: {os.strerror(-rc)}")

    def _wait(self, fd: int) -> Reads:
        waiter = Waiter()
        self._waiters[fd] = waiter
        try:
            waiter.get()
        except BaseException as err:
            self._waiters.pop(fd, None)
            self._lib.tbr_cancel(self._of(fd), fd)
            err.partial = self._take(fd)  # type: ignore[attr-defined]
            raise
        return self._take(fd)

    def _take(self, fd: int) -> Reads:
        """Copy the response out of the thread's slot (which it then reuses): two allocations, one call.

        A response cut as too large keeps only its head: its bytes would be copied (twice, raw and
        dechunked) only to be dropped, and under an endless stream that copy was most of the client's
        peak memory.
        """
        info, h = self._info, self._of(fd)
        self._lib.tbr_info(h, fd, info)
        result, errno, size, nreads, consumed, blen, nbody, head_len, term_start, chunked = info[:]
        keep = size
        if result == TOO_LARGE:
            keep, blen, nbody = head_len, 0, 0
        octets = np.empty(keep + blen, np.uint8)
        ints = np.empty(2 * (nreads + nbody), np.int64)
        a, b = octets.ctypes.data, ints.ctypes.data
        body, bends, bstamps = (
            (a + keep, b + 16 * nreads, b + 16 * nreads + 8 * nbody) if blen else (None,) * 3
        )
        self._lib.tbr_take(h, fd, keep, a, b, b + 8 * nreads, body, bends, bstamps)
        if self.clock_offset_ns:
            ints[nreads : 2 * nreads] += self.clock_offset_ns
            ints[2 * nreads + nbody :] += self.clock_offset_ns
        return Reads(
            result,
            errno,
            octets[:keep],
            ints[:nreads],
            ints[nreads : 2 * nreads],
            octets[keep:].tobytes(),
            ints[2 * nreads : 2 * nreads + nbody],
            ints[2 * nreads + nbody :],
            head_len,
            consumed,
            term_start,
            bool(chunked),
            size,
        )

    def stamps(self) -> dict[str, Any]:
        """Reads so far (in all, and per thread), and how many carried no kernel receive stamp."""
        per_thread, unstamped = [], 0
        out = (ctypes.c_int64 * 2)()
        for h in self._hs:
            self._lib.tbr_stamps(h, out)
            per_thread.append(int(out[0]))
            unstamped += int(out[1])
        return {"reads": sum(per_thread), "thread_stamped": unstamped, "per_thread": per_thread}

    def cpu_s(self) -> float:
        """CPU-seconds the reader threads have used (part of the process's CPU, shown apart in the health)."""
        return sum(self._lib.tbr_cpu_ns(h) for h in self._hs) / 1e9

    def close(self) -> None:
        for watcher in getattr(self, "_watchers", []):
            watcher.stop()
            watcher.close()
        self._watchers = []
        for h in self._hs:
            self._lib.tbr_close(h)
        self._hs = []


def python_clock_offset() -> int:
    """``time.monotonic_ns()`` minus ``CLOCK_MONOTONIC`` (what the thread stamps with): 0 unless shifted.

    The one case where they differ is the distributed tests' hook that shifts
    this process's ``time.monotonic_ns`` to play a worker on another host
    (``clocksync.apply_test_offset``); the thread's stamps must then carry the
    same shift as every other stamp of the process. A difference under 1 ms is
    the two reads' own spacing, not a shift.
    """
    diff = time.monotonic_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return diff if abs(diff) >= 1_000_000 else 0


def default_threads(streams: int) -> int:
    """Reader threads for a process of ``streams`` users: one per ``STREAMS_PER_THREAD``, at most its cores.

    Why 512: one thread took 0.95 of a core at 1,024 streams of 100 tokens/s
    (2-core VM), so it falls behind past about a thousand; half that leaves
    room for a slower machine. More threads than cores would only queue.
    """
    return max(1, min(-(-streams // STREAMS_PER_THREAD), len(available_cpus()), MAX_THREADS))


def open_reader(home: Path | None = None, streams: int = 1) -> tuple[NativeReader | None, str]:
    """This process's native reader for ``streams`` users, or None with the reason the Python path is used."""
    if os.environ.get("TOKENBENCH_READER", "").strip() == "python":
        return None, "python (TOKENBENCH_READER=python)"
    sched = os.environ.get(SCHED_ENV, "").strip() or SCHED_DEFAULT
    try:
        raw = os.environ.get(POLL_ENV, "").strip()
        try:
            poll_us = float(raw) if raw else POLL_US
        except ValueError:
            raise ValueError(f"{POLL_ENV}: expected a number of µs, got {raw!r}") from None
        raw = os.environ.get(THREADS_ENV, "").strip()
        try:
            threads = int(raw) if raw else default_threads(streams)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}: expected a whole number, got {raw!r}") from None
        lib = build_shared(SOURCE, "tokenbench-nativeread", home)
        reader = NativeReader(lib, sched=sched, poll_us=poll_us, threads=threads)
        how = "SCHED_FIFO 1" if reader.fifo else f"nice {reader.nice}"
        count = f"{threads} reader threads" if threads > 1 else "reader thread"
        return reader, f"native ({count} {how})"
    except (CBuildError, OSError, ValueError) as err:
        return None, f"python (native reader unavailable: {err})"
