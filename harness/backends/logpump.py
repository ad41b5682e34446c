"""Copy a child's output into its log file line by line, scrubbing every line on the way.

Why not hand the child the log file: what a server prints is not ours to
check once it is on disk. vLLM logs its own arguments (``--api-key`` among
them) at start-up, a middleware may print the request headers, a client
library quotes a 401 body. With a pipe in between, each line passes through
the run's :class:`~harness.runsecrets.Redactor` before it is written, so
``server.log`` and ``locust.log`` hold no secret the harness knows.

Lines end at ``\\n`` or ``\\r`` (progress bars redraw with ``\\r``). A line
longer than ``MAX_LINE`` is written in pieces, each scrubbed; a secret cut by
such a boundary could survive, which is why pieces are large.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import BinaryIO

from harness.redact import scrub_text

MAX_LINE = 1 << 20
READ_SIZE = 64 * 1024
Scrub = Callable[[str], str]


def _line_end(buf: bytearray) -> int:
    """Index just past the first ``\\n`` or ``\\r`` in ``buf``, or -1."""
    ends = [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]
    return min(ends) + 1 if ends else -1


class LogPump:
    """A daemon thread reading ``read_fd`` (a pipe's read end, owned and closed here) into ``sink``.

    ``scrub`` defaults to scrubbing by shape only (no known values). The sink is
    flushed after every write, so a reader (``tail`` for a failure message) sees
    each finished line. :meth:`join` waits for the end of the output: the child
    and every process that inherited the pipe closed it.
    """

    def __init__(self, read_fd: int, sink: BinaryIO, scrub: Scrub | None = None, name: str = "log") -> None:
        self._fd = read_fd
        self._sink = sink
        self._scrub: Scrub = scrub or scrub_text
        self._thread = threading.Thread(target=self._run, name=f"logpump-{name}", daemon=True)
        self._thread.start()

    def _write(self, raw: bytes | bytearray) -> None:
        text = bytes(raw).decode("utf-8", "replace")
        self._sink.write(self._scrub(text).encode("utf-8"))
        self._sink.flush()

    def _run(self) -> None:
        buf = bytearray()
        try:
            while True:
                try:
                    data = os.read(self._fd, READ_SIZE)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                while (end := _line_end(buf)) >= 0 or len(buf) >= MAX_LINE:
                    cut = end if end >= 0 else MAX_LINE
                    self._write(buf[:cut])
                    del buf[:cut]
            if buf:
                self._write(buf)
        except (OSError, ValueError):
            pass  # the sink was closed under us (teardown after a timeout): nothing left to keep
        finally:
            os.close(self._fd)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the output to end; True if it did within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
