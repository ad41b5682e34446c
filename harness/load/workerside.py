"""A distributed step's worker side, inside its Locust worker process: hello, pongs, the plan, record batches.

Why a module of its own: a worker started by ``tokenbench worker`` has no plan
file, no prompts file and no scenario. It says hello with the shared token,
answers the master's clock pings, and gets everything else in one
``wire.PlanShipment``, kept in memory: the auth headers and secret values are
never written to this host's disk. Files the plan names on the master's host
(tokenizer, CA bundle) are written to a private temporary folder, removed when
the process quits. Records go back as ``wire.PartBatch`` messages
(``MessageSpool``) instead of part files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust.env import Environment
from pydantic import ValidationError

from harness.load.plan import LoadPlan
from harness.load.prompts import PromptSpec, prompts_from_text
from harness.load.spool import FINAL, RecordSpool
from harness.load.wire import (
    MSG_HELLO,
    MSG_PART,
    MSG_PING,
    MSG_PLAN,
    MSG_PONG,
    MSG_READY,
    MSG_REFUSED,
    REFUSED_EXIT,
    TOKEN_ENV,
    PlanShipment,
    Refused,
    table_to_bytes,
)
from harness.records import records_to_table

log = logging.getLogger("tokenbench.worker")


@dataclass(frozen=True)
class Shipment:
    """The plan message, unpacked for the locustfile's ``ProcessContext``."""

    index: int
    plan: LoadPlan
    prompts: list[PromptSpec]
    headers: dict[str, str]
    secrets: list[str]


@dataclass
class MessageSpool(RecordSpool):
    """A ``RecordSpool`` whose parts go to the master as messages: this host keeps no record files."""

    send: Callable[[str, dict[str, Any]], None] | None = None

    def _write(self, name: str, table: Any, texts: list[str] | None = None) -> None:
        """Send one part; like a file part it is final as sent (``finalize`` adds the tokenizer counts).

        Inline, on the event loop: Locust's message channel is not for other threads.
        """
        assert self.send is not None
        if self.finalize is not None and texts is not None:
            table = self.finalize(table, texts)
        stem = name.removesuffix(".parquet")
        self.send(
            MSG_PART,
            {
                "index": self.worker,
                "name": stem,
                "final": stem.endswith(FINAL),
                "arrow": table_to_bytes(table),
            },
        )

    def final(self, rows: list[dict[str, Any]]) -> None:
        self._write(f"p{self.worker:04d}-{FINAL}", records_to_table(rows))
        self.pending = []


def install(environment: Environment, on_plan: Callable[[Shipment], None]) -> None:
    """Register the worker's handlers and say hello (the token comes from ``TOKENBENCH_WORKER_TOKEN``)."""
    runner = environment.runner
    scratch = Path(tempfile.mkdtemp(prefix="tokenbench-worker-"))

    def pong(msg: Any, **_: Any) -> None:
        t2 = time.monotonic_ns()
        data = msg.data or {}
        runner.send_message(
            MSG_PONG, {"seq": data.get("seq"), "t1": data.get("t1"), "t2": t2, "t3": time.monotonic_ns()}
        )

    def refused(msg: Any, **_: Any) -> None:
        try:
            refusal = Refused.model_validate(msg.data)
        except ValidationError:
            refusal = Refused(reason="no reason given")
        log.error("tokenbench: the master refused this worker: %s", refusal.reason)
        if refusal.final:
            environment.process_exit_code = REFUSED_EXIT

    def plan(msg: Any, **_: Any) -> None:
        try:
            shipment = unpack(PlanShipment.model_validate(msg.data), scratch)
        except (ValidationError, ValueError) as err:
            log.error("tokenbench: unusable plan from the master: %s", str(err)[:500])
            return
        on_plan(shipment)
        runner.send_message(MSG_READY, {"index": shipment.index})
        log.info("tokenbench: worker %d took step %s", shipment.index, shipment.plan.step_id)

    runner.register_message(MSG_PING, pong)
    runner.register_message(MSG_REFUSED, refused)
    runner.register_message(MSG_PLAN, plan)
    environment.events.quitting.add_listener(lambda **_: shutil.rmtree(scratch, ignore_errors=True))
    runner.send_message(MSG_HELLO, {"token": os.environ.get(TOKEN_ENV, ""), "host": socket.gethostname()})


def unpack(ship: PlanShipment, scratch: Path) -> Shipment:
    """The shipped plan with this host's copies of its files; records and health paths stay the master's
    (only the master writes them)."""
    data = dict(ship.plan)
    for name, text in ship.files.items():
        if name not in ("tokenizer_path", "tls_ca_bundle"):
            raise ValueError(f"unexpected file field {name!r}")
        path = scratch / f"{name}.{ship.index}"
        path.write_text(text, encoding="utf-8")
        data[name] = str(path)
    plan = LoadPlan.from_dict(data, "<shipped plan>")
    plan = dataclasses.replace(plan, prompts_path="<shipped>")
    prompts = prompts_from_text(ship.prompts_jsonl, "<shipped prompts>")
    return Shipment(ship.index, plan, prompts, dict(ship.headers), list(ship.secrets))
