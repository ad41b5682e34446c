"""The truth server's CPU share on a shared machine.

Separate from the server so that the one place that changes scheduling is
small and easy to audit: it only ever touches the calling process and, under
autogroup scheduling, a session group that holds nothing but it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# One above the native stream readers' SCHED_FIFO 1 (harness/load/nativeread.c).
REALTIME_PRIORITY = 2
TRUTH_SCHEDS = ("fifo", "nice")


def raise_priority(nice: int) -> int:
    """Ask for a better CPU share; returns the niceness in effect (the autogroup's, where there is one).

    Why: on a shared machine the truth server competes with the client under
    test and with everything else; a truth side that loses the CPU writes
    late, shrinks the load and the benchmark no longer measures the load asked
    for (issue 11 §2). A larger share for the ~0.6 core it needs at 100k
    chunks/s keeps the load real; the client is measured as it is, at its own
    priority. With Linux's autogroup scheduling (``sched_autogroup_enabled``)
    a process's nice only ranks it inside its session's group, so the group's
    nice is set too, and only when the session is this process's own: it leads
    it, or its parent does (``ManagedProcess`` starts a supervisor with
    ``start_new_session`` and the server as its only child), so the client's
    session is never boosted. Without the privilege (not root, no CAP_SYS_NICE) nothing
    changes and the report's ``nice`` says so.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass
    auto = Path("/proc/self/autogroup")
    if os.getsid(0) in (os.getpid(), os.getppid()) and auto.exists():
        try:
            auto.write_text(f"{nice}\n")
            return int(auto.read_text().split("nice")[-1])
        except (OSError, ValueError):
            return 0  # the group's share is unchanged, whatever the process's own nice
    return os.getpriority(os.PRIO_PROCESS, 0)


def realtime_prefix(priority: int = REALTIME_PRIORITY) -> list[str]:
    """``chrt -f PRIORITY``, to start the truth server as ``SCHED_FIFO``, where that is permitted; else ``[]``.

    Why real-time, above the readers: with the readers at ``SCHED_FIFO`` 1 and
    the truth server at nice -10, every chunk the server wrote woke a reader
    that preempted it, so at 1,024 streams the server fell behind its own
    schedule (write lag p99 57-600 ms: TRUTH-LIMITED) and the TTFT error
    measured its lateness, not the client's. A truth server that is never
    preempted writes on time and the errors left are the client's; the client
    gets what the server leaves of the CPU, as it would beside a real server.
    It only ever runs between its timer and its writes (it blocks in epoll),
    and the kernel's RT throttling still leaves others 5 %. Checked by
    running ``chrt -f PRIORITY true``: without the privilege (not root, no
    CAP_SYS_NICE) or without ``chrt`` the server is started as before and its
    nice applies.
    """
    chrt = shutil.which("chrt")
    if chrt is None:
        return []
    cmd = [chrt, "-f", str(priority)]
    try:
        ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return cmd if ok else []
