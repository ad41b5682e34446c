"""Stop what an earlier, killed harness left running.

Why apart from ``process``: this is the one place that looks at processes the
harness did *not* start in this run. It finds them by the owner marker every
``ManagedProcess`` child carries (``harness.owner``) and stops only those whose
owner is gone, so two harnesses on one host never stop each other's servers.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

from harness.backends.process import _group_alive, _signal_group
from harness.owner import OWNER_ENV, owner_alive
from harness.redact import redact_command


def stop_leftovers(grace_s: float = 2.0) -> list[str]:
    """Stop processes that an earlier, crashed harness started and that outlived it.

    Every child of a ``ManagedProcess`` carries ``OWNER_ENV``; a process whose
    owner is gone is a leftover. Its whole group gets SIGTERM, then SIGKILL
    after ``grace_s``. Returns one line per process stopped, for the run log.
    """
    found: dict[int, list[str]] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            marker = proc.environ().get(OWNER_ENV)
            if marker is None or owner_alive(marker):
                continue
            cmd = " ".join(redact_command(proc.info["cmdline"] or []))[:160]
            found.setdefault(os.getpgid(proc.pid), []).append(
                f"pid {proc.pid} (started by harness pid {marker.split(':')[0]}): {cmd}"
            )
        except (psutil.Error, ProcessLookupError, OSError):
            continue
    for pgid in found:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_alive(g) for g in found):
        time.sleep(0.05)
    for pgid in found:
        _signal_group(pgid, signal.SIGKILL)
    return [line for lines in found.values() for line in lines]
