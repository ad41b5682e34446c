"""What ``locust -f`` loads: the one user class, the plan's protocol spec, and the wiring per Locust process.

Started only by ``harness.load.runner.run_step``, which passes the plan path in
``TOKENBENCH_LOAD_PLAN``, auth headers in ``TOKENBENCH_LOAD_HEADERS`` and the run's
known secret values (scrubbed from every record) in ``TOKENBENCH_LOAD_SECRETS``.

Process roles (Locust decides them; ``--processes N`` forks N workers):

* local (one process): runs users, gathers its own records, writes the files, quits.
* worker: runs users, appending finished records to its part files as it goes
  (``spool``); when its share of the step is over it writes its final part,
  sends its health report to the master (``runner.send_message``) and idles.
* master: runs no users; gathers the reports, quits once every worker has
  reported, and merges the parts and writes the files in the ``quitting``
  hook, which also runs on SIGTERM so a cut-short step keeps partial results.

Across hosts (``workload.distributed``): the master is started with the plan
as above and ``harness.load.distributed`` admits workers; every worker is a
``tokenbench worker`` (``harness.load.worker``) started *without* a plan, which
arrives over Locust's channel (``harness.load.workerside``), and its records go
back as messages.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from harness.atomic import write_json
from harness.load.collector import MSG_DONE, MasterCollector, StepState
from harness.load.finisher import Finisher
from harness.load.live import MSG_PROGRESS, PUBLISH_S, merge_snapshots, progress_path
from harness.load.nativeread import NativeReader, open_reader
from harness.load.plan import PLAN_ENV, LoadPlan, headers_from_env, plan_from_env
from harness.load.prewarm import BARRIER_SLACK_S, PrewarmBarrier
from harness.load.prompts import PromptSpec, read_prompts
from harness.load.recordbuild import finalize_records
from harness.load.schedule import ArrivalPool
from harness.load.spool import RecordSpool, parts_dir
from harness.load.tokencount import TokenCounter
from harness.load.users import StreamingUser, make_pool
from harness.protocols.base import ProtocolSpec
from harness.protocols.registry import get_protocol
from harness.records import records_to_table
from harness.runsecrets import Redactor

log = logging.getLogger("tokenbench.load")

MSG_FLUSH = "tokenbench_flush"
REPORT_GRACE_S = 3.0
WATCHDOG_SLACK_S = 60.0

# None in a distributed worker: its plan arrives from the master (``workerside``).
PLAN = plan_from_env() if os.environ.get(PLAN_ENV) else None


class TokenbenchUser(StreamingUser):
    """The only concrete user Locust sees; its protocol comes from the plan (``ProcessContext.protocol``)."""

    abstract = False


@dataclass
class ProcessContext:
    """Everything one Locust process needs for the step; hung on the environment as ``tokenbench``."""

    plan: LoadPlan
    environment: Environment
    protocol: ProtocolSpec
    headers: dict[str, str] = field(default_factory=dict)
    secrets: Redactor = field(default_factory=Redactor)
    prompts: list[PromptSpec] = field(default_factory=list)
    state: StepState | None = None
    collector: MasterCollector | None = None
    finisher: Finisher = field(default_factory=Finisher)
    bodies: dict[int, bytes] = field(default_factory=dict)  # serialised request per prompt index
    barrier: PrewarmBarrier | None = None  # ``connections: prewarm``: users meet here before the clock
    reader: NativeReader | None = None  # the process's native stream reader (None: the Python read path)
    reader_kind: str = "python"  # which read path, and why not native, for the step's health
    _reader_cpu0: float = 0.0  # the reader thread's CPU at the step's start
    live: dict[int, dict[str, Any]] = field(default_factory=dict)  # latest progress snapshot per process
    index: int | None = None  # distributed: this worker's index, assigned by the master
    spool_factory: Callable[[int], RecordSpool] | None = None  # distributed: records go as messages
    started: bool = False
    _pool: ArrivalPool | None = None
    _reported: bool = False
    _quitting: bool = False
    _quit_done: Event = field(default_factory=Event)
    _sampler: Any = None
    _publisher: Any = None

    @property
    def runner(self) -> Any:
        return self.environment.runner

    def arrival_pool(self) -> ArrivalPool | None:
        if self._pool is None and self.plan.kind == "rate":
            assert self.state is not None
            self._pool = make_pool(self.state, self.plan)
        return self._pool

    # --- user-running processes (local or worker) -------------------------------------------

    def on_test_start(self) -> None:
        assert self.state is not None
        if isinstance(self.runner, WorkerRunner):
            index = self.index if self.index is not None else int(self.runner.worker_index)
            self.state.worker_index = max(0, index)
            self.state.workers = self.plan.processes
        if self.state.spool is None:
            self.state.spool = self.make_spool()
        if self._sampler is None:
            self._sampler = gevent.spawn(self.state.run_lag_sampler)
        # pyarrow imports pandas the first time it builds a table from Python lists (0.3-1.3 s measured
        # here). Left to the first spool flush 2 s into the step, that import ran on the event loop:
        # loop lag max 360 ms, a 350 ms stamp lag on every open stream, a 200-request step's TTFT p99
        # 22 -> 1300 ms (issue 11 §2). Paid now, before the first request, and frozen below with the rest.
        records_to_table([])
        # Everything alive now (Locust, gevent, pyarrow, numpy: ~10^5 objects) lives
        # for the whole step. A full collection walking it all stopped the event
        # loop for 55-85 ms at 256 streams, which every stream's read stamps then
        # carried. Frozen objects are never scanned again; cycles made during the
        # step are still collected.
        gc.collect()
        gc.freeze()
        if self.reader is not None:
            self._reader_cpu0 = self.reader.cpu_s()

    def open_reader(self) -> None:
        """The native stream reader for an HTTP protocol (``nativeread``); the Python path if it cannot run.

        Left running until the process exits: a user may still be reading when
        Locust stops, and the thread holds nothing that outlives the process.
        """
        if self.protocol.transport == "http" and self.reader is None:
            processes = self.plan.workers_expected or self.plan.processes  # that run users
            self.reader, self.reader_kind = open_reader(streams=-(-self.plan.users // processes))

    def make_spool(self) -> RecordSpool:
        """This process's spool; every part it writes is final (tokenizer counts added in the write job)."""
        assert self.state is not None
        finalize = TokenCounter(self.plan.tokenizer_path) if self.plan.tokenizer_path else None
        if self.spool_factory is not None:
            spool = self.spool_factory(self.state.worker_index)
            spool.finalize = finalize
            return spool
        pool = gevent.get_hub().threadpool
        return RecordSpool(
            parts_dir(self.plan.records_path),
            worker=self.state.worker_index,
            submit=pool.spawn,
            finalize=finalize,
        )

    def ship(self) -> None:
        """Write this process's final part file and hand its report to the collector (or the master)."""
        if self._reported or self.state is None:
            return
        # Streams still queued for interpretation are records too: finish them
        # first (this may itself be running inside the finisher's last job).
        self.finisher.drain()
        self._reported = True
        if self._pool is not None:
            self._pool.stop()
        if self.state.spool is not None:
            self.state.spool.close()  # its parts are final as written: nothing is held or rewritten
        else:
            rows = finalize_records(self.state.records, self.state.texts, self.plan.tokenizer_path)
            self.make_spool().final(rows)
        self.publish()  # the final counts, before the master may quit
        report = self.state.report()
        report["reader"] = self.reader_kind
        if self.reader is not None:
            r = self.reader  # responses the thread saw to their end, replayed, and requests it chained
            report["reader_responses"] = {"whole": r.whole, "replayed": r.replayed, "chained": r.chain_sends}
            report["reader_cpu_s"] = round(self.reader.cpu_s() - self._reader_cpu0, 4)
            report["reader_stamps"] = r.stamps()  # reads stamped by the kernel on arrival, or by the thread
        if self.barrier is not None:
            report["prewarm"] = self.barrier.report()
        if isinstance(self.runner, WorkerRunner):
            self.runner.send_message(MSG_DONE, report)
        else:
            assert self.collector is not None
            self.collector.add_report(report)

    # --- live progress (every process) -------------------------------------------------------

    def start_publisher(self) -> None:
        if self._publisher is None:
            self._publisher = gevent.spawn(self._publish_loop)

    def _publish_loop(self) -> None:
        """Greenlet: once a second, publish progress until this process has nothing more to say."""
        while not self._quitting and not (self.collector is not None and self.collector.written):
            if self.collector is None and self._reported:
                return  # a worker whose share is over sent its final counts in ``ship``
            gevent.sleep(PUBLISH_S)
            self.publish()

    def publish(self) -> None:
        """A worker sends its snapshot to the master; the master (or local process) writes the merge.

        The file is written from gevent's thread pool, off the event loop that stamps reads.
        Progress is a display aid: a failure here is logged and never ends the step.
        """
        try:
            if self.state is not None:
                snapshot = self.state.live_snapshot()
                if isinstance(self.runner, WorkerRunner):
                    self.runner.send_message(MSG_PROGRESS, snapshot)
                    return
                self.live[snapshot["index"]] = snapshot
            if self.collector is not None and not self.collector.written:
                data = merge_snapshots(list(self.live.values()), self.plan)
                gevent.get_hub().threadpool.spawn(write_json, progress_path(self.plan.records_path), data)
        except Exception:
            log.exception("tokenbench: could not publish progress")

    # --- collecting processes (local or master) ---------------------------------------------

    def quit_soon(self) -> None:
        gevent.spawn(self.runner.quit)

    def watchdog(self) -> None:
        """Duration mode: a step cannot legitimately outlast warm-up + duration + one timeout."""
        plan = self.plan
        assert plan.duration_s is not None
        gevent.sleep(WATCHDOG_SLACK_S + plan.warmup_s + plan.duration_s + plan.timeout_s)
        log.warning("tokenbench: step overran its deadline; stopping with partial results")
        self.runner.quit()

    def on_quitting(self) -> None:
        if self._quitting:
            # Locust may run shutdown twice (SIGTERM plus the main greenlet ending);
            # the second must not exit the process before the first has written.
            self._quit_done.wait(REPORT_GRACE_S + 30)
            return
        self._quitting = True
        try:
            self._quit()
        finally:
            self._quit_done.set()

    def _quit(self) -> None:
        if self.state is not None:
            self.ship()
        if self.collector is None or self.collector.written:
            return
        if self.plan.expect_workers and not self.started:
            log.error("tokenbench: the step never started (workers did not come): no records written")
            return
        if isinstance(self.runner, MasterRunner) and not self.collector.all_reported:
            try:
                self.runner.send_message(MSG_FLUSH)
            except Exception:  # workers may already be gone; we keep what we have
                log.exception("tokenbench: could not ask workers to flush")
            deadline = time.monotonic() + REPORT_GRACE_S
            while not self.collector.all_reported and time.monotonic() < deadline:
                gevent.sleep(0.05)
        try:
            self.collector.write()
            self.environment.process_exit_code = 0
        except Exception:
            log.exception("tokenbench: failed to write step records")
            self.environment.process_exit_code = 3


def _on_init(environment: Environment, **_kw: Any) -> None:
    if PLAN is None:
        _init_remote_worker(environment)
        return
    plan = PLAN
    ctx = ProcessContext(
        plan=plan,
        environment=environment,
        protocol=get_protocol(plan.api),
        headers=headers_from_env(),
        secrets=Redactor.from_environ(),
    )
    ctx.secrets.add_headers(ctx.headers)
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        ctx.prompts = read_prompts(plan.prompts_path)
        ctx.state = StepState(plan=plan, on_done=ctx.ship)
        ctx.open_reader()
        if plan.connections == "prewarm":
            ctx.barrier = PrewarmBarrier(
                # This process's users: Locust sets the target before it spawns any (local and worker).
                expected=lambda: int(runner.target_user_count or plan.users),
                deadline_s=min(plan.timeout_s, 30.0) + BARRIER_SLACK_S,
            )
    if not isinstance(runner, WorkerRunner):
        expected = plan.processes if isinstance(runner, MasterRunner) else 1
        if plan.expect_workers:
            expected = plan.workers_expected
        ctx.collector = MasterCollector(plan=plan, expected=expected, on_all_done=ctx.quit_soon)
    if isinstance(runner, MasterRunner) and plan.expect_workers:
        _init_distributed_master(ctx)
    elif isinstance(runner, MasterRunner):
        collector = ctx.collector
        assert collector is not None
        runner.register_message(MSG_DONE, lambda msg, **_: collector.add_report(msg.data))
        runner.register_message(
            MSG_PROGRESS, lambda msg, **_: ctx.live.__setitem__(msg.data["index"], msg.data)
        )
    if isinstance(runner, WorkerRunner):
        runner.register_message(MSG_FLUSH, lambda msg, **_: ctx.ship())
    environment.tokenbench = ctx  # type: ignore[attr-defined]
    _listen_quitting(environment)


def _listen_quitting(environment: Environment) -> None:
    # Registered here, after Locust's runner added its own: ``quitting`` fires in
    # reverse order, so ours runs first and a worker ships its records before
    # it tells the master it quit (after which the master stops listening).
    environment.events.quitting.add_listener(_on_quitting)


def _init_distributed_master(ctx: ProcessContext) -> None:
    """The master of a step spread over hosts: it admits workers and takes their records as messages."""
    from harness.load.distributed import DistributedMaster
    from harness.load.wire import TOKEN_ENV

    collector, plan = ctx.collector, ctx.plan
    assert collector is not None
    master = DistributedMaster(
        plan=plan,
        runner=ctx.runner,
        collector=collector,
        token=os.environ.get(TOKEN_ENV, ""),
        headers=ctx.headers,
        secrets=sorted(ctx.secrets.known),
        expected=collector.expected,
    )
    collector.amend = master.amend_health
    master.install()
    ctx.runner.register_message(MSG_DONE, lambda msg, **_: master.add_report(msg.data, msg.node_id))
    ctx.runner.register_message(
        MSG_PROGRESS, lambda msg, **_: ctx.live.__setitem__(msg.data["index"], msg.data)
    )
    ctx.environment.events.test_start.add_listener(lambda **_: setattr(master, "started", True))


def _init_remote_worker(environment: Environment) -> None:
    """A ``tokenbench worker``: no plan yet; the context is built when the master's plan arrives."""
    from harness.load.workerside import MessageSpool, Shipment, install

    runner = environment.runner

    def on_plan(ship: Shipment) -> None:
        secrets = Redactor(ship.secrets)
        secrets.add_headers(ship.headers)
        ctx = ProcessContext(
            plan=ship.plan,
            environment=environment,
            protocol=get_protocol(ship.plan.api),
            headers=ship.headers,
            secrets=secrets,
            prompts=ship.prompts,
            index=ship.index,
            spool_factory=lambda index: MessageSpool(Path("."), worker=index, send=runner.send_message),
        )
        ctx.state = StepState(plan=ship.plan, on_done=ctx.ship)
        ctx.open_reader()
        runner.register_message(MSG_FLUSH, lambda msg, **_: ctx.ship())
        environment.tokenbench = ctx  # type: ignore[attr-defined]

    install(environment, on_plan)
    _listen_quitting(environment)


def _on_test_start(environment: Environment, **_kw: Any) -> None:
    ctx: ProcessContext | None = getattr(environment, "tokenbench", None)
    if ctx is None:
        log.error("tokenbench: told to start before the master sent a plan; this worker runs nothing")
        return
    ctx.started = True
    if ctx.state is not None:
        ctx.on_test_start()
    if ctx.collector is not None and ctx.plan.duration_s is not None:
        gevent.spawn(ctx.watchdog)
    ctx.start_publisher()


def _on_quitting(environment: Environment, **_kw: Any) -> None:
    ctx: ProcessContext | None = getattr(environment, "tokenbench", None)
    if ctx is not None:
        ctx.on_quitting()


events.init.add_listener(_on_init)
events.test_start.add_listener(_on_test_start)
