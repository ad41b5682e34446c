"""Run one load step: spawn Locust on the plan, wait, and hand back the records it wrote.

Why a subprocess: Locust needs gevent's monkey-patching, which must not leak
into the orchestrator (plain threads, subprocess management, httpx). The
orchestrator stays plain Python; Locust runs in its own process group via
``ManagedProcess`` so that ``--processes`` workers die with it, on success,
error and Ctrl-C alike.

Secrets: auth headers go to Locust only through ``TOKENBENCH_LOAD_HEADERS`` in
its environment, and the run's known secret values (which Locust scrubs from
every record) through ``TOKENBENCH_LOAD_SECRETS``. They are never written to the
plan file or put on the command line; Locust's output reaches ``locust.log``
through the registry's scrubbing log pump.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.atomic import write_json
from harness.backends.process import ManagedProcess, ProcessRegistry, free_port, tail
from harness.backends.watch import ServerDied, ServerWatch
from harness.load.fdlimit import OpenFilesError, ensure_open_files
from harness.load.live import progress_path
from harness.load.plan import HEADERS_ENV, PLAN_ENV, LoadPlan
from harness.load.spool import merge_parts, parts_dir
from harness.load.wire import TOKEN_ENV
from harness.placement import LOAD
from harness.runsecrets import SECRETS_ENV, Redactor

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TERMINATE_GRACE_S = 10.0
MIN_SPAWN_RATE = 100
MASTER_HOST = "127.0.0.1"


class LoadRunError(RuntimeError):
    """Locust did not produce records for a step; the message carries the log tail."""


@dataclass(frozen=True)
class StepOutcome:
    records_path: Path
    health: dict[str, Any]
    returncode: int | None
    log_path: Path
    wall_s: float


def locust_command(plan: LoadPlan, master_port: int | None = None) -> list[str]:
    """The Locust command line for a plan (no secrets: those travel in the environment).

    Users spawn at ``max(users, 100)``/s so the pool is up within a second:
    a slow ramp would show up as fake queueing in open loop and as lower
    concurrency than asked in closed loop.
    """
    users = plan.users
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(max(users, MIN_SPAWN_RATE)),
        "--stop-timeout",
        str(math.ceil(plan.timeout_s + 5)),  # Locust accepts whole seconds only
        "--loglevel",
        "INFO",
    ]
    if plan.expect_workers:
        assert plan.master_bind is not None  # LoadPlan.validate checks it
        host, _, port_text = plan.master_bind.rpartition(":")
        # Binding beyond loopback is the scenario's explicit choice (``workload.distributed.bind``).
        cmd += [
            "--master",
            "--master-bind-host",
            host.strip("[]"),
            "--master-bind-port",
            port_text,
            "--expect-workers",
            str(plan.workers_expected),
            "--expect-workers-max-wait",
            str(math.ceil(plan.worker_wait_s)),
        ]
    elif plan.processes > 1:
        port = master_port if master_port is not None else free_port()
        # Locust's master channel has no authentication: it listens on loopback only
        # (by default it binds every interface).
        cmd += [
            "--processes",
            str(plan.processes),
            "--master-bind-host",
            MASTER_HOST,
            "--master-bind-port",
            str(port),
            "--master-host",
            MASTER_HOST,
            "--master-port",
            str(port),
        ]
    return cmd


def start_local_workers(
    plan: LoadPlan, step_dir: Path, registry: ProcessRegistry | None, secrets: Redactor
) -> list[ManagedProcess]:
    """Distributed: this host's own workers, connecting to the master like any other host's."""
    from harness.load.worker import MasterAddress, worker_command, worker_env

    assert plan.master_bind is not None
    address = MasterAddress.parse(plan.master_bind)
    if address.host in ("0.0.0.0", "::", "*"):
        address = MasterAddress("127.0.0.1", address.port)
    return [
        ManagedProcess(
            worker_command(address),
            log_path=step_dir / f"worker-{i}.log",
            env=worker_env(),
            cwd=PROJECT_ROOT,
            registry=registry,
            scrub=secrets.text,
            kind=LOAD,  # local workers are load generators too: the placement's load CPUs
        )
        for i in range(plan.local_workers)
    ]


def locust_env(
    plan_path: Path, headers: dict[str, str] | None, secrets: Redactor | None = None
) -> dict[str, str]:
    """The child environment: plan path, headers and known secrets (JSON), import path; stray
    LOCUST_* settings removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env[PLAN_ENV] = str(plan_path)
    env.pop(HEADERS_ENV, None)
    env.pop(SECRETS_ENV, None)
    if headers:
        env[HEADERS_ENV] = json.dumps(headers)
    if secrets is not None and secrets.known:
        env[SECRETS_ENV] = secrets.to_environ()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_plan(path: Path, plan: LoadPlan, secrets: Redactor) -> None:
    """Write the plan file, which must hold no secret: a field that does is an error naming the field.

    Why not write it scrubbed: Locust would then run another plan (a ``REDACTED`` URL or path).
    """
    data = plan.to_dict()
    leaked = [key for key, value in data.items() if any(k in str(value) for k in secrets.known)]
    if leaked:
        raise LoadRunError(f"the load plan of step {plan.step_id} would hold a secret in {', '.join(leaked)}")
    write_json(path, data)


def run_step(
    plan: LoadPlan,
    step_dir: Path,
    *,
    headers: dict[str, str] | None = None,
    registry: ProcessRegistry | None = None,
    max_wall_s: float | None = None,
    watch: ServerWatch | None = None,
    secrets: Redactor | None = None,
    on_wait: Callable[[], None] | None = None,
) -> StepOutcome:
    """Drive one step with Locust and return where its records are.

    ``max_wall_s`` bounds the whole Locust run (default: generous for duration
    mode, none for request-count mode); past it Locust is terminated and the
    partial records are kept. Raises ``LoadRunError`` if no records file
    appeared. On KeyboardInterrupt the Locust group is terminated (it writes
    what it has) and the interrupt is re-raised. ``watch`` is polled while
    Locust runs: when the server dies, Locust is stopped (its records so far
    are written) and ``ServerDied`` is raised. ``secrets`` (the run's) are
    scrubbed from the plan file, the records and the failure message.
    ``on_wait`` is called about ten times a second while Locust runs (the progress
    display polls ``progress.json`` there); the file is removed when the step ends.
    """
    secrets = secrets or Redactor()
    step_dir = Path(step_dir)
    step_dir.mkdir(parents=True, exist_ok=True)
    # Each Locust worker needs at least one user, or it would never report.
    plan = dataclasses.replace(plan, processes=max(1, min(plan.processes, plan.users)))
    records_path, health_path = Path(plan.records_path), Path(plan.health_path)
    live_path = progress_path(records_path)
    for stale in (records_path, health_path, live_path):
        stale.unlink(missing_ok=True)
    shutil.rmtree(parts_dir(records_path), ignore_errors=True)
    try:
        ensure_open_files(plan.users, plan.processes)
    except OpenFilesError as err:
        raise LoadRunError(str(err)) from None
    plan_path = step_dir / "load_plan.json"
    write_plan(plan_path, plan, secrets)
    log_path = step_dir / "locust.log"
    if max_wall_s is None and plan.duration_s is not None:
        max_wall_s = 120.0 + plan.warmup_s + plan.duration_s + 2 * plan.timeout_s

    started = time.monotonic()
    if plan.expect_workers:
        secrets.add(os.environ.get(TOKEN_ENV, ""))
    proc = ManagedProcess(
        locust_command(plan),
        log_path=log_path,
        env=locust_env(plan_path, headers, secrets),
        cwd=PROJECT_ROOT,
        registry=registry,
        scrub=secrets.text,
        kind=LOAD,  # the registry's placement puts the load generator on its own CPUs
    )
    returncode: int | None = None
    died: str | None = None
    workers = start_local_workers(plan, step_dir, registry, secrets) if plan.expect_workers else []
    try:
        while (returncode := proc.poll()) is None:
            if max_wall_s is not None and time.monotonic() - started > max_wall_s:
                returncode = proc.terminate(TERMINATE_GRACE_S)
                break
            if watch is not None and (died := watch.check()) is not None:
                returncode = proc.terminate(TERMINATE_GRACE_S)
                break
            if on_wait is not None:
                on_wait()
            time.sleep(0.1)
    except BaseException:
        proc.terminate(TERMINATE_GRACE_S)
        raise
    finally:
        proc.terminate(TERMINATE_GRACE_S)
        for worker in workers:
            worker.terminate(TERMINATE_GRACE_S)
        for left in (live_path, *live_path.parent.glob(f".{live_path.name}.*.tmp")):
            left.unlink(missing_ok=True)  # a display aid, not a result
    wall_s = time.monotonic() - started

    recovered = None
    if not records_path.exists():
        # Locust died before merging (killed, crashed): keep what its processes had written.
        recovered = merge_parts(records_path)
    if died is not None:
        raise ServerDied(f"the server died during step {plan.step_id}: {died}; records so far kept")
    if not records_path.exists():
        lines = "\n".join(tail(log_path, 40))
        raise LoadRunError(
            secrets.text(
                f"Locust (exit code {returncode}) wrote no records to {records_path}; log {log_path}:\n{lines}"
            )
        )
    health: dict[str, Any] = {}
    if health_path.exists():
        health = json.loads(health_path.read_text(encoding="utf-8"))
    if recovered is not None:
        health.setdefault("reasons", []).append(
            f"Locust exited with code {returncode} before writing its records: {recovered.num_rows} "
            "records recovered from its part files (the last unwritten group per process is lost)"
        )
    return StepOutcome(records_path, health, returncode, log_path, wall_s)
