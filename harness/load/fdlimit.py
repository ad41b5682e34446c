"""Enough file descriptors for a step, checked before Locust starts.

Why up front: every streaming user holds a socket, and 2,000 users under the
common ``ulimit -n 1024`` fail with "Too many open files" minutes into a
step, after which even the records file cannot be opened. The soft limit can
be raised to the hard one without privileges, so that is done silently (Locust
inherits it); past the hard limit the step is refused with the number needed.
"""

from __future__ import annotations

import math
import resource

# Sockets are not all a process holds: Python, gevent, pyarrow, the log and the
# records file, plus connections being replaced. Measured idle Locust: ~60.
MARGIN = 256


class OpenFilesError(RuntimeError):
    """The hard open-files limit is below what the step needs; the message gives both numbers."""


def needed_per_process(users: int, processes: int) -> int:
    return math.ceil(users / max(processes, 1)) + MARGIN


def ensure_open_files(users: int, processes: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` if a step of ``users`` needs it; return the new soft limit."""
    need = needed_per_process(users, processes)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise OpenFilesError(
            f"this step needs about {need} open files per load process ({users} users over "
            f"{processes} process(es) + {MARGIN}), but the hard limit is {hard}: raise it "
            f"(`ulimit -Hn {need}` as root, or LimitNOFILE= in systemd), or use more `processes`"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
