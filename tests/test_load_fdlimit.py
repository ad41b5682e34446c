"""The open-files limit is raised or the step refused before Locust starts (no lost records)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import resource, sys
from harness.load.fdlimit import OpenFilesError, ensure_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
try:
    print("soft", ensure_open_files(int(sys.argv[3]), int(sys.argv[4])))
except OpenFilesError as err:
    print("refused", err)
"""


def _probe(soft: int, hard: int, users: int, processes: int) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(soft), str(hard), str(users), str(processes)],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_soft_limit_is_raised_to_the_hard_limit_when_needed() -> None:
    assert _probe(1024, 4096, 2000, 1) == "soft 4096"


def test_enough_already_changes_nothing() -> None:
    assert _probe(1024, 4096, 100, 1) == "soft 1024"


def test_processes_share_the_users() -> None:
    assert _probe(1024, 1024, 1400, 2) == "soft 1024"  # 700 + margin per process fits


def test_past_the_hard_limit_the_step_is_refused_with_the_numbers() -> None:
    out = _probe(1024, 1024, 2000, 1)
    assert out.startswith("refused") and "2256" in out and "hard limit is 1024" in out
