"""Starting ``tokenbench worker`` processes for loopback tests of distributed steps.

Each worker runs with its working directory in a fresh temporary folder (a
worker needs neither the checkout nor the scenario), ``PYTHONPATH`` pointing at
this checkout (the package is installed editable elsewhere: a real host would
``pip install tokenbench``), the shared token, and optionally an artificial
clock offset (``TOKENBENCH_TEST_CLOCK_OFFSET_NS``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.load.clocksync import TEST_OFFSET_ENV
from harness.load.wire import TOKEN_ENV

REPO = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    cwd: Path
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole worker (the ``tokenbench worker`` loop and its Locust child)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def start_worker(
    cwd: Path, port: int, token: str | None, *, offset_ns: int = 0, steps: int = 1
) -> WorkerProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "TOKENBENCH_LOAD_"))}
    env["PYTHONPATH"] = str(REPO)
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token
    if offset_ns:
        env[TEST_OFFSET_ENV] = str(offset_ns)
    log_path = cwd / "worker.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.load.worker",
                "--master",
                f"127.0.0.1:{port}",
                "--steps",
                str(steps),
            ],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc, cwd, log_path)
