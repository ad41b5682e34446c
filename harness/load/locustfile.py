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
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from harness.atomic import write_json
from harness.load.collector import MSG_DONE, MasterCollector, StepState, finalize_records
from harness.load.finisher import Finisher
from harness.load.live import MSG_PROGRESS, PUBLISH_S, merge_snapshots, progress_path
from harness.load.plan import LoadPlan, headers_from_env, plan_from_env
from harness.load.prompts import PromptSpec, read_prompts
from harness.load.schedule import ArrivalPool
from harness.load.spool import RecordSpool, parts_dir
from harness.load.tokencount import TokenCounter
from harness.load.users import StreamingUser, make_pool
from harness.protocols.base import ProtocolSpec
from harness.protocols.registry import get_protocol
from harness.runsecrets import Redactor

log = logging.getLogger("tokenbench.load")

MSG_FLUSH = "tokenbench_flush"
REPORT_GRACE_S = 3.0
WATCHDOG_SLACK_S = 60.0

PLAN = plan_from_env()


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
    live: dict[int, dict[str, Any]] = field(default_factory=dict)  # latest progress snapshot per process
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
            self.state.worker_index = max(0, int(self.runner.worker_index))
            self.state.workers = self.plan.processes
        if self.state.spool is None:
            directory = parts_dir(self.plan.records_path)
            pool = gevent.get_hub().threadpool
            finalize = TokenCounter(self.plan.tokenizer_path) if self.plan.tokenizer_path else None
            self.state.spool = RecordSpool(
                directory, worker=self.state.worker_index, submit=pool.spawn, finalize=finalize
            )
        if self._sampler is None:
            self._sampler = gevent.spawn(self.state.run_lag_sampler)
        # Everything alive now (Locust, gevent, pyarrow, numpy: ~10^5 objects) lives
        # for the whole step. A full collection walking it all stopped the event
        # loop for 55-85 ms at 256 streams, which every stream's read stamps then
        # carried. Frozen objects are never scanned again; cycles made during the
        # step are still collected.
        gc.collect()
        gc.freeze()

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
            RecordSpool(parts_dir(self.plan.records_path), self.state.worker_index).final(rows)
        self.publish()  # the final counts, before the master may quit
        report = self.state.report()
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
    if not isinstance(runner, WorkerRunner):
        expected = plan.processes if isinstance(runner, MasterRunner) else 1
        ctx.collector = MasterCollector(plan=plan, expected=expected, on_all_done=ctx.quit_soon)
    if isinstance(runner, MasterRunner):
        collector = ctx.collector
        assert collector is not None
        runner.register_message(MSG_DONE, lambda msg, **_: collector.add_report(msg.data))
        runner.register_message(
            MSG_PROGRESS, lambda msg, **_: ctx.live.__setitem__(msg.data["index"], msg.data)
        )
    if isinstance(runner, WorkerRunner):
        runner.register_message(MSG_FLUSH, lambda msg, **_: ctx.ship())
    environment.tokenbench = ctx  # type: ignore[attr-defined]
    # Registered here, after Locust's runner added its own: ``quitting`` fires in
    # reverse order, so ours runs first and a worker ships its records before
    # it tells the master it quit (after which the master stops listening).
    environment.events.quitting.add_listener(_on_quitting)


def _on_test_start(environment: Environment, **_kw: Any) -> None:
    ctx: ProcessContext = environment.tokenbench  # type: ignore[attr-defined]
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
