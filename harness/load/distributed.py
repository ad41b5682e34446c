"""The master's side of a step spread over hosts: admit workers, sync clocks, ship the plan, take records.

Why on top of Locust's master/worker and not beside it: Locust already
dispatches users over workers, keeps heartbeats and carries custom messages.
What it lacks for tokenbench is (1) authentication: its channel accepts any
worker, so a worker must present the shared token before it gets the plan
(which holds the auth headers) or any users; (2) a shared clock: each worker's
stamps are mapped to the master's time base (``clocksync``); (3) a shared disk:
records arrive as messages (``wire.PartBatch``) and the master writes the
step's part files, which ``MasterCollector`` merges as for local processes.

The gate: Locust counts a worker as soon as it says ``client_ready``; here its
node stays hidden (``AdmittedNodes``) until it has presented the token, answered
the clock pings and taken the plan. Locust's headless start waits for
``--expect-workers`` *visible* workers, so users go only to admitted ones. A
worker that turns up after the start is refused: the plan's quotas are split
already.

A worker that dies mid-step (heartbeats stop, Locust marks it missing) is
declared lost: the collector stops waiting for it, its records received so far
are kept, and the step is flagged (``amend_health``).

Runs in the Locust master process only (gevent); started by the locustfile.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import pyarrow.parquet as pq
from locust.rpc import Message
from locust.runners import STATE_MISSING, MasterRunner, WorkerNodes
from pydantic import ValidationError

from harness.atomic import atomic_path
from harness.load.clocksync import KEEP, ROUNDS, ClockEstimate, ClockSyncError, Exchange, estimate
from harness.load.spool import parts_dir
from harness.load.wire import (
    MSG_HELLO,
    MSG_PART,
    MSG_PING,
    MSG_PLAN,
    MSG_PONG,
    MSG_READY,
    MSG_REFUSED,
    Hello,
    PartBatch,
    PlanShipment,
    Pong,
    Ready,
    shift_stamps,
    table_from_bytes,
)
from harness.load.workerhealth import WorkerFacts, amend_health

if TYPE_CHECKING:
    from harness.load.collector import MasterCollector
    from harness.load.plan import LoadPlan

log = logging.getLogger("tokenbench.distributed")

PING_GAP_S = 0.01
PONG_WAIT_S = 2.0
LOST_POLL_S = 0.5
# What a worker may send before it is admitted: Locust's greeting and heartbeats, and the admission talk.
UNADMITTED_MESSAGES = frozenset({"client_ready", "heartbeat", MSG_HELLO, MSG_PONG, MSG_READY})


class AdmittedNodes(WorkerNodes):
    """Locust's worker table, showing only admitted workers to everything that iterates it.

    Lookups by id still see every node (heartbeats of a worker being admitted keep
    it alive); dispatch, ``ready`` counts and broadcasts see admitted ones only.
    """

    def __init__(self, admitted: set[str]) -> None:
        super().__init__()
        self.admitted = admitted

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([k for k in list(self._worker_nodes) if k in self.admitted])

    def __len__(self) -> int:
        return sum(1 for k in self._worker_nodes if k in self.admitted)


@dataclass
class Admission:
    """What the master knows about one worker: its index, host, clock."""

    client_id: str
    host: str
    index: int | None = None
    clock: ClockEstimate | None = None
    pongs: list[Exchange] = field(default_factory=list)
    ready: bool = False
    lost: bool = False


@dataclass
class DistributedMaster:
    """One step's master-side bookkeeping; ``install`` wires it into Locust's runner."""

    plan: LoadPlan
    runner: MasterRunner
    collector: MasterCollector
    token: str
    headers: dict[str, str]
    secrets: list[str]
    expected: int
    workers: dict[str, Admission] = field(default_factory=dict)
    admitted: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    started: bool = False
    _next_index: int = 0
    _shipment: dict[str, Any] | None = None

    # --- wiring -------------------------------------------------------------------------------

    def install(self) -> None:
        runner = self.runner
        runner.clients = AdmittedNodes(self.admitted)
        original = runner.handle_message

        def handle(client_id: str, msg: Message) -> None:
            if client_id not in self.admitted:
                if msg.type == "client_ready" and self.started:
                    self._refuse(
                        client_id, "the step already started: a worker must connect before it starts"
                    )
                    return
                if msg.type not in UNADMITTED_MESSAGES:
                    # Not Locust's business yet: a refused worker's "quit" must not count as a
                    # worker leaving (Locust would stop the step when "the last worker quit").
                    if msg.type == "quit":
                        runner.clients._worker_nodes.pop(client_id, None)
                    return
            original(client_id, msg)

        runner.handle_message = handle  # type: ignore[method-assign]
        runner.register_message(MSG_HELLO, lambda msg, **_: self.on_hello(msg.node_id, msg.data))
        runner.register_message(MSG_PONG, lambda msg, **_: self.on_pong(msg.node_id, msg.data))
        runner.register_message(MSG_READY, lambda msg, **_: self.on_ready(msg.node_id, msg.data))
        runner.register_message(MSG_PART, lambda msg, **_: self.on_part(msg.node_id, msg.data))
        gevent.spawn(self._watch_lost)

    def _send(self, client_id: str, kind: str, data: Any) -> None:
        self.runner.server.send_to_client(Message(kind, data, client_id))

    def _refuse(self, client_id: str, reason: str, *, final: bool = False) -> None:
        """Turn a worker away; ``final`` (a wrong token) tells its ``tokenbench worker`` not to retry."""
        self.refused.append(reason)
        log.warning("tokenbench: refused worker %s: %s", client_id, reason)
        self._send(client_id, MSG_REFUSED, {"reason": reason, "final": final})
        self._send(client_id, "quit", None)

    # --- admission ----------------------------------------------------------------------------

    def on_hello(self, client_id: str, data: Any) -> None:
        try:
            hello = Hello.model_validate(data)
        except ValidationError:
            self._refuse(client_id, "malformed hello", final=True)
            return
        if self.started:
            self._refuse(client_id, "the step already started")
            return
        if not hmac.compare_digest(hello.token.encode(), self.token.encode()):
            self._refuse(client_id, "wrong worker token", final=True)  # never the token itself
            return
        if client_id in self.workers:
            return
        self.workers[client_id] = Admission(client_id, hello.host[:200])
        gevent.spawn(self._sync_and_ship, client_id)

    def _sync_and_ship(self, client_id: str) -> None:
        """Clock pings (``ROUNDS``, ``PING_GAP_S`` apart), the estimate, then the plan."""
        adm = self.workers[client_id]
        for seq in range(ROUNDS):
            self._send(client_id, MSG_PING, {"seq": seq, "t1": time.monotonic_ns()})
            gevent.sleep(PING_GAP_S)
        deadline = time.monotonic() + PONG_WAIT_S
        while len(adm.pongs) < ROUNDS and time.monotonic() < deadline:
            gevent.sleep(0.01)
        try:
            adm.clock = estimate(adm.pongs, KEEP)
        except ClockSyncError as err:
            self._refuse(client_id, f"clock sync failed: {err}")
            return
        if self.started or len([a for a in self.workers.values() if a.index is not None]) >= self.expected:
            self._refuse(client_id, "enough workers are admitted already")
            return
        adm.index = self._next_index
        self._next_index += 1
        log.info(
            "tokenbench: worker %d on %s: clock offset %.3f ms ± %.3f ms (round trip %.3f ms)",
            adm.index, adm.host, adm.clock.offset_ns / 1e6, adm.clock.uncertainty_ns / 1e6,
            adm.clock.round_trip_ns / 1e6,
        )  # fmt: skip
        self._send(client_id, MSG_PLAN, {**self.shipment(), "index": adm.index})

    def on_pong(self, client_id: str, data: Any) -> None:
        t4 = time.monotonic_ns()
        adm = self.workers.get(client_id)
        try:
            pong = Pong.model_validate(data)
        except ValidationError:
            return
        if adm is not None and adm.clock is None:
            adm.pongs.append(Exchange(pong.t1, pong.t2, pong.t3, t4))

    def on_ready(self, client_id: str, data: Any) -> None:
        adm = self.workers.get(client_id)
        if adm is None or adm.index is None or Ready.model_validate(data).index != adm.index:
            return
        adm.ready = True
        self.admitted.add(client_id)  # now Locust sees it: counted, dispatched to
        log.info("tokenbench: worker %d admitted (%d of %d)", adm.index, len(self.admitted), self.expected)

    def shipment(self) -> dict[str, Any]:
        """The plan message (without the index), built once: prompts and files read from this host."""
        if self._shipment is None:
            plan = self.plan
            data = plan.to_dict()
            data["processes"] = self.expected
            files = {}
            for name in ("tokenizer_path", "tls_ca_bundle"):
                path = data.get(name)
                if path:
                    files[name] = Path(path).read_text(encoding="utf-8")
            ship = PlanShipment(
                index=0,
                plan=data,
                prompts_jsonl=Path(plan.prompts_path).read_text(encoding="utf-8"),
                files=files,
                headers=self.headers,
                secrets=self.secrets,
            )
            self._shipment = ship.model_dump(exclude={"index"})
        return self._shipment

    # --- during the step ----------------------------------------------------------------------

    def on_part(self, client_id: str, data: Any) -> None:
        """A batch of a worker's records: mapped to this clock, written as that worker's part file."""
        adm = self.workers.get(client_id)
        if adm is None or adm.index is None or adm.clock is None or client_id not in self.admitted:
            return
        try:
            batch = PartBatch.model_validate(data)
            table = table_from_bytes(batch.arrow)
        except Exception:  # noqa: BLE001 - a bad batch is logged, the step goes on
            log.exception("tokenbench: unreadable record batch from worker %s", adm.index)
            return
        if not batch.name.startswith(f"p{adm.index:04d}-"):
            log.warning("tokenbench: worker %d sent a part named %s; ignored", adm.index, batch.name)
            return
        table = shift_stamps(table, adm.clock.offset_ns)
        directory = parts_dir(self.plan.records_path)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / f"{batch.name}.parquet") as tmp:
            pq.write_table(table, tmp)
        if batch.final:
            for old in directory.glob(f"p{adm.index:04d}-[0-9]*.parquet"):
                old.unlink(missing_ok=True)

    def add_report(self, report: dict[str, Any], client_id: str) -> None:
        """Locust's done report from a worker, with its host and clock added."""
        adm = self.workers.get(client_id)
        if adm is None or adm.index is None or client_id not in self.admitted:
            return
        report = {**report, "index": adm.index}
        self.collector.add_report(report)

    def _watch_lost(self) -> None:
        """Greenlet: a worker whose heartbeats stopped (or that quit) before reporting is lost."""
        while not self.collector.written:
            gevent.sleep(LOST_POLL_S)
            if not self.started:
                continue
            for client_id in list(self.admitted):
                adm = self.workers[client_id]
                if adm.lost or adm.index in self.collector.reports:
                    continue
                node = self.runner.clients._worker_nodes.get(client_id)
                if node is None or node.state == STATE_MISSING:
                    adm.lost = True
                    log.warning("tokenbench: worker %d on %s was lost mid-step", adm.index, adm.host)
                    self.collector.mark_lost(adm.index)  # type: ignore[arg-type]

    # --- health -------------------------------------------------------------------------------

    def amend_health(self, health: dict[str, Any]) -> None:
        """Per-worker host and clock into ``health.json``; lost workers and doubtful clocks flag the step."""
        facts = [
            WorkerFacts(a.index, a.host, a.clock, a.lost)
            for a in self.workers.values()
            if a.index is not None and a.ready
        ]
        amend_health(health, facts, len(self.refused))
