"""Which harness process owns a run folder or a server process.

Why a marker and not just a pid: pids are reused, so ``pid:start-time`` names
one process for good. A run's ``summary.json`` and every process the harness
starts (in its environment, ``TOKENBENCH_OWNER``) carry the marker of the
harness that started them. A later harness can then tell a run that is still
going from one whose harness was SIGKILLed, and stop servers that such a
harness left behind.
"""

from __future__ import annotations

import os

import psutil

OWNER_ENV = "TOKENBENCH_OWNER"


def owner_marker() -> str:
    """``<pid>:<start time>`` of this harness process, put in every child's environment.

    The start time makes the marker unique even after the pid is reused, so a
    later run can tell its own children from those of a harness that died.
    """
    return f"{os.getpid()}:{psutil.Process().create_time():.2f}"


def owner_alive(marker: str) -> bool:
    """Whether the harness process that ``marker`` (see :func:`owner_marker`) names is still running."""
    pid_text, _, started = marker.partition(":")
    try:
        owner = psutil.Process(int(pid_text))
        return f"{owner.create_time():.2f}" == started
    except (ValueError, psutil.Error):
        return False
