"""A CLOCK_MONOTONIC ``timerfd`` for an ``epoll`` loop: wake-ups at microsecond, not millisecond, precision.

Why: ``epoll.poll(timeout)`` takes whole milliseconds (Python rounds up), so a
loop that sleeps until its next due write is on average half a millisecond
late and at worst a whole one; the truth server's ITL and TTFT would carry
that. A ``timerfd`` armed at an absolute ``CLOCK_MONOTONIC`` time (the clock
``time.monotonic_ns`` reads) becomes readable at that time, and the loop waits
on it like on any socket. Python 3.11 has no ``os.timerfd_create`` (3.13
does), so this is the two libc calls through ``ctypes``; Linux only, like the
truth server's ``epoll``.
"""

from __future__ import annotations

import ctypes
import os

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
PR_SET_TIMERSLACK = 29


def tighten_timer_slack(slack_ns: int = 1_000) -> bool:
    """Lower this thread's timer slack (default 50 µs: the kernel may fire that late to batch wake-ups)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(slack_ns), 0, 0, 0) == 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFdError(OSError):
    """The kernel refused a timerfd call."""


class MonotonicTimer:
    """One-shot absolute timer; ``fd`` goes readable at the armed ``monotonic_ns`` time."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise TimerFdError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)
        self._settime = self._libc.timerfd_settime
        self.armed_ns = 0

    def arm(self, at_ns: int) -> None:
        """Fire at ``at_ns`` (``time.monotonic_ns`` clock); a time already past fires at once."""
        at_ns = max(at_ns, 1)  # 0 would disarm
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(at_ns, 1_000_000_000)
        if self._settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise TimerFdError(ctypes.get_errno(), "timerfd_settime failed")
        self.armed_ns = at_ns

    def clear(self) -> None:
        """Consume the expiry count after the fd was readable."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed_ns = 0

    def close(self) -> None:
        os.close(self.fd)
