"""Running the real ``tokenbench`` CLI from tests, as a user would: a subprocess in the project folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tokenbench(
    *args: object,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m harness.cli ARGS`` with captured text output; ``extra_env`` adds to this process's env."""
    base = dict(os.environ if env is None else env)
    base.update(extra_env or {})
    base.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *map(str, args)],
        cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
