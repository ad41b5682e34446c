"""What travels between a distributed step's master and its workers, over Locust's own channel.

Why messages and not files: a worker on another host shares no disk with the
master (and needs neither the checkout nor the scenario). So the plan, the
prompts, the tokenizer, the auth headers and the run's secret values go *to*
the worker in one ``PlanShipment``, and its records come *back* in batches of
Arrow IPC bytes (``PartBatch``), which the master maps to its clock and writes.

Order of one worker's life (master ``distributed``, worker ``workerside``):

1. ``HELLO`` worker → master: the shared token (and the host name, for health).
2. ``REFUSED`` master → worker (wrong token, or the step already started); or
3. ``PING``/``PONG`` rounds (``clocksync``), then ``PLAN`` master → worker;
4. ``READY`` worker → master: only now does Locust count the worker and start.
5. ``PART`` worker → master while it runs, then Locust's usual done report.

Pydantic models at this edge: a message from the network is checked before use.
No gevent or Locust here.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from harness.runsecrets import WORKER_TOKEN_ENV

MSG_HELLO = "tokenbench_hello"
MSG_REFUSED = "tokenbench_refused"
MSG_PING = "tokenbench_ping"
MSG_PONG = "tokenbench_pong"
MSG_PLAN = "tokenbench_plan"
MSG_READY = "tokenbench_ready"
MSG_PART = "tokenbench_part"

TOKEN_ENV = WORKER_TOKEN_ENV
REFUSED_EXIT = 77  # a refused worker's Locust exit code: ``tokenbench worker`` stops instead of retrying
STAMP_COLUMNS = ("scheduled_ns", "sent_ns", "end_ns", "first_token_ns")
STAMP_LISTS = ("chunk_times_ns",)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hello(_Message):
    token: str = ""
    host: str = ""


class Refused(_Message):
    reason: str
    final: bool = True  # False: not this step (it started already, or is full), maybe the next one


class Ping(_Message):
    seq: int
    t1: int


class Pong(_Message):
    seq: int
    t1: int
    t2: int
    t3: int


class PlanShipment(_Message):
    """Everything a worker needs for one step; held in memory only (headers never touch its disk)."""

    index: int = Field(ge=0)  # this worker's index among the step's workers (request ids, seeds, quotas)
    plan: dict[str, Any]  # ``LoadPlan.to_dict()``, ``processes`` = every worker of the step
    prompts_jsonl: str
    files: dict[str, str] = Field(default_factory=dict)  # plan field → file text (tokenizer, CA bundle)
    headers: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)


class Ready(_Message):
    index: int


class PartBatch(_Message):
    """Records from one worker: ``name`` as the spool names its part files, ``final`` for the last."""

    index: int
    name: str = Field(pattern=r"^p[0-9]{4}-([0-9]{6}|final)$")
    final: bool = False
    arrow: bytes


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.BufferReader(data)) as reader:
        return reader.read_all()


def shift_stamps(table: pa.Table, minus_ns: int) -> pa.Table:
    """Every ``*_ns`` stamp of ``table`` less ``minus_ns`` (a worker's clock offset): the master's time base."""
    if minus_ns == 0:
        return table
    delta = pa.scalar(minus_ns, pa.int64())
    for name in STAMP_COLUMNS:
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, pc.subtract(table.column(name), delta))
    for name in STAMP_LISTS:
        if name in table.column_names:
            i = table.column_names.index(name)
            chunks = []
            for arr in table.column(name).chunks:
                values = pc.subtract(arr.values, delta)
                chunks.append(type(arr).from_arrays(arr.offsets, values, mask=arr.is_null()))
            table = table.set_column(
                i, table.schema.field(name), pa.chunked_array(chunks, table.schema.field(name).type)
            )
    return table
