"""``tokenbench worker --master HOST:PORT``: lend this host's cores to a distributed run.

Why a loop around a plain Locust worker: a run is many steps, and each step has
its own Locust master (started by ``runner.run_step`` on the run's host, on the
same ``bind`` address). So this command runs one Locust worker per step: it
connects, says hello with the shared token (``TOKENBENCH_WORKER_TOKEN``), gets
the plan over the channel (``workerside``), runs its users, sends its records
back, and exits when the master quits; then the next one waits for the next
step's master. A refused worker (wrong token) stops for good with exit code 2.

This host needs tokenbench installed (``pip install tokenbench``), nothing
else: not the checkout, not the scenario, no shared disk. Locust runs in a
child process (gevent's monkey-patching stays out of this one), in the caller's
working directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.load.wire import REFUSED_EXIT

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
RETRY_PAUSE_S = 1.0


class WorkerError(RuntimeError):
    """The worker cannot run: bad ``--master`` or refused by the master."""


@dataclass(frozen=True)
class MasterAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> MasterAddress:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise WorkerError(f"--master: expected HOST:PORT with a port in 1..65535, got {text!r}")
        return cls(host.strip("[]"), int(port))


# ``python -m locust``, after the test-only clock shift (a no-op unless TOKENBENCH_TEST_CLOCK_OFFSET_NS
# is set): it must come before Locust or any harness module keeps a reference to time.monotonic_ns.
BOOTSTRAP = (
    "from harness.load.clocksync import apply_test_offset; apply_test_offset(); "
    "from locust.main import main; main()"
)


def worker_command(master: MasterAddress) -> list[str]:
    """The Locust worker command line: no plan, no secrets (the token is in the environment)."""
    return [
        sys.executable, "-c", BOOTSTRAP, "-f", str(LOCUSTFILE), "--worker",
        "--master-host", master.host, "--master-port", str(master.port), "--loglevel", "INFO",
    ]  # fmt: skip


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment less Locust's settings and any single-host plan variables."""
    env = {
        k: v for k, v in (os.environ if environ is None else environ).items() if not k.startswith("LOCUST_")
    }
    for name in ("TOKENBENCH_LOAD_PLAN", "TOKENBENCH_LOAD_HEADERS", "TOKENBENCH_LOAD_SECRETS"):
        env.pop(name, None)
    root = str(Path(__file__).resolve().parents[2])
    if root not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), root) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def serve(master: MasterAddress, *, steps: int | None = None, log=print) -> int:  # type: ignore[no-untyped-def]
    """Run Locust workers for ``master`` one step after another (``steps``: how many; None: until stopped).

    Returns 0, or raises ``WorkerError`` when refused. SIGTERM/SIGINT end the
    current Locust worker and return.
    """
    served = 0
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping and (steps is None or served < steps):
            log(f"tokenbench worker: waiting for the master at {master.host}:{master.port}")
            child = subprocess.Popen(worker_command(master), env=worker_env())
            code = child.wait()
            if code == REFUSED_EXIT:
                raise WorkerError(
                    f"the master at {master.host}:{master.port} refused this worker (see the log above)"
                )
            served += 1
            if not stopping and (steps is None or served < steps):
                time.sleep(RETRY_PAUSE_S)
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.load.worker --master HOST:PORT [--steps N]`` (what ``tokenbench worker`` calls)."""
    import argparse

    parser = argparse.ArgumentParser(prog="tokenbench worker")
    parser.add_argument("--master", required=True)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        return serve(MasterAddress.parse(args.master), steps=args.steps)
    except WorkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
