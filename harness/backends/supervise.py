"""A tiny supervisor that ties a server's whole process group to the harness's life.

Why it exists: ``ManagedProcess`` puts every server in its own process group
and ``ProcessRegistry`` kills those groups when the harness exits normally, on
Ctrl-C or on SIGTERM. None of that runs when the harness is SIGKILLed (the OOM
killer, ``kill -9``, a CI runner that gives up): vLLM's API server, its
resource tracker and its ``EngineCore`` (a grandchild) would keep the port, the
cores and gigabytes of memory. ``PR_SET_PDEATHSIG`` alone does not help: it
reaches only the direct child, not the grandchildren.

So the harness starts this script as the process-group leader, and it starts
the real command in the same group:

* it asks the kernel for SIGTERM when the harness dies (``PR_SET_PDEATHSIG``);
* on SIGTERM it checks whether its parent is still the harness. If so, this is
  an ordinary teardown (the harness signalled the whole group and escalates to
  SIGKILL itself), and it only waits for the command. If not, the harness is
  gone: it signals the group with SIGTERM, waits ``ORPHAN_GRACE_S``, then
  SIGKILLs the group, itself included;
* it hands the command's pid back over a pipe, so the harness measures and
  reports the real server, not this wrapper;
* with ``--cpus 0-3,6`` it pins itself to those CPUs before it starts the
  command, so the command, its threads and children inherit the set
  (``harness/placement.py``);
* it exits with the command's status (re-raising the command's fatal signal),
  so callers see what they would have seen without it.

It is run as a file (``python supervise.py``), not as a module, so that it
imports nothing of the harness and starts in tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
ORPHAN_GRACE_S = 2.0
USAGE = "usage: supervise.py PID_FD PARENT_PID [--cpus LIST] -- COMMAND..."


def _set_parent_death_signal(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        print(f"supervise: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}", file=sys.stderr)


def _others_alive(pgid: int) -> bool:
    """Whether any process of the group other than this one is still alive (zombies excluded)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def _stop_group(pgid: int) -> None:
    """The harness is gone: SIGTERM the group, give it a moment, then SIGKILL it (and this process)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while time.monotonic() < deadline and _others_alive(pgid):
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def main(argv: list[str]) -> int:
    cpus: set[int] | None = None
    if len(argv) >= 4 and argv[2] == "--cpus":
        cpus = _cpu_list(argv[3])
        argv = argv[:2] + argv[4:]
    if len(argv) < 4 or argv[2] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    pid_fd, parent = int(argv[0]), int(argv[1])
    command = argv[3:]
    if cpus is not None:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as err:  # the command runs unpinned; the harness reads back what it got
            print(f"supervise: sched_setaffinity({sorted(cpus)}) failed: {err}", file=sys.stderr)
    pgid = os.getpgrp()
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the harness died before the death signal was armed
        os.close(pid_fd)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent:
            _stop_group(pgid)
        # Otherwise the harness signalled the whole group: the command got it too.

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        os.close(pid_fd)
        print(f"supervise: cannot start {command[0]!r}: {err}", file=sys.stderr)
        return 127
    os.write(pid_fd, f"{child.pid}\n".encode())
    os.close(pid_fd)
    code = child.wait()
    if code < 0:  # die the way the command died
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
