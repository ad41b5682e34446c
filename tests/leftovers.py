"""Finding processes a test's harness left behind.

Why an environment marker: the harness starts servers and Locust in their own
sessions (so it can kill whole process groups), which means session or parent
links cannot find them. Environment variables are inherited, so a unique
marker in the harness's environment tags every descendant.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def new_marker() -> tuple[str, str]:
    return "TOKENBENCH_TEST_MARKER", uuid.uuid4().hex


def processes_with_marker(value: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose environment carries the marker value."""
    needle = value.encode()
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            status = (entry / "status").read_text()
            if "\nState:\tZ" in status:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(entry.name), cmd))
    return found
