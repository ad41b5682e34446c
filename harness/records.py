"""The per-request record: the raw truth every metric is computed from.

Why a plain dataclass and a fixed Arrow schema: records are built on the load
generator's hot path (one per request, thousands per second), so they must be
cheap to create, and they are persisted as Parquet so that any metric can be
recomputed later without trusting an aggregate. Locust's own statistics round
response times to two significant digits; we never read them.

All ``*_ns`` times are ``time.monotonic_ns()`` values. On Linux that clock is
system-wide, so records from Locust worker processes, telemetry samples from
the harness and the simulator's write log share one time axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

ErrorClass = Literal[
    "connect",
    "connect_timeout",
    "timeout",
    "http_4xx",
    "http_5xx",
    "stream_broken",
    "stream_too_large",
    "bad_payload",
]
# connect: refused or closed before a response; connect_timeout: no connection established in time;
# timeout: connected, but no complete response in time; stream_too_large: past the response bound.
ERROR_CLASSES: tuple[str, ...] = (
    "connect",
    "connect_timeout",
    "timeout",
    "http_4xx",
    "http_5xx",
    "stream_broken",
    "stream_too_large",
    "bad_payload",
)

TokenSource = Literal["usage", "usage_per_chunk", "tokenizer", "chunks", "none"]


@dataclass(slots=True)
class RequestRecord:
    """One request, as the client saw it.

    ``scheduled_ns`` is when the load plan wanted the request sent. In open
    loop it comes from the Poisson schedule, so if every user is busy the wait
    shows up as latency instead of vanishing (coordinated omission). In closed
    loop it equals ``sent_ns``. Latencies (TTFT, E2E) are measured from
    ``scheduled_ns``.
    """

    run_id: str
    cell_id: str
    step_id: str
    request_id: int
    worker: int
    api: str
    scheduled_ns: int
    sent_ns: int
    end_ns: int
    first_token_ns: int | None = None
    chunk_times_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str = "none"
    client_output_tokens: int | None = None
    requested_prompt_tokens: int | None = None
    requested_output_tokens: int | None = None
    status: int = 0
    error_class: str | None = None
    error_message: str | None = None
    warmup: bool = False
    coalesced_chunks: int = 0
    simulated: bool = False
    retry_after: str | None = None  # a 429/503's Retry-After header, as sent (recorded, never honoured)
    # Time this request spent opening its connection (TCP, TLS); None when it reused the kept one.
    # gRPC: None (the channel connects inside the call; its prewarm time is in health.json).
    connect_ns: int | None = None
    # Whether the request went out on an already-open connection (None in records written before it).
    reused_connection: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None


RECORD_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("cell_id", pa.string()),
        ("step_id", pa.string()),
        ("request_id", pa.int64()),
        ("worker", pa.int32()),
        ("api", pa.string()),
        ("scheduled_ns", pa.int64()),
        ("sent_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("first_token_ns", pa.int64()),
        ("chunk_times_ns", pa.list_(pa.int64())),
        ("chunk_tokens", pa.list_(pa.int32())),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("token_source", pa.string()),
        ("client_output_tokens", pa.int64()),
        ("requested_prompt_tokens", pa.int64()),
        ("requested_output_tokens", pa.int64()),
        ("status", pa.int32()),
        ("error_class", pa.string()),
        ("error_message", pa.string()),
        ("warmup", pa.bool_()),
        ("coalesced_chunks", pa.int32()),
        ("simulated", pa.bool_()),
        ("retry_after", pa.string()),
        ("connect_ns", pa.int64()),
        ("reused_connection", pa.bool_()),
    ]
)

# Rows per row group of a merged or exported records file (~20 MB at 128 chunks a request):
# readers decode a group at a time, so one huge group would cost its size again in memory.
ROW_GROUP_ROWS = 16_384

RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RequestRecord))
assert RECORD_FIELDS == tuple(RECORD_SCHEMA.names), "RequestRecord and RECORD_SCHEMA drifted apart"


def scrub_record(record: RequestRecord, scrub: Callable[[str], str]) -> RequestRecord:
    """The record's server-made text (``error_message``, ``retry_after``) passed through ``scrub``.

    Why: a server may echo the request's Authorization header into a 401 body or an SSE
    error event, and the record would keep it (``harness.runsecrets``).
    """
    if record.error_message is not None:
        record.error_message = scrub(record.error_message)
    if record.retry_after is not None:
        record.retry_after = scrub(record.retry_after)
    return record


def record_to_dict(record: RequestRecord) -> dict[str, Any]:
    """A record as plain data, fit for msgpack (Locust worker messages) or JSON."""
    return {name: getattr(record, name) for name in RECORD_FIELDS}


def records_to_table(rows: list[dict[str, Any]] | list[RequestRecord]) -> pa.Table:
    dicts = [record_to_dict(r) if isinstance(r, RequestRecord) else r for r in rows]
    columns = {name: [d.get(name) for d in dicts] for name in RECORD_FIELDS}
    return pa.table(columns, schema=RECORD_SCHEMA)


def write_records(path: Path, rows: list[dict[str, Any]] | list[RequestRecord]) -> None:
    """Write records atomically: a reader never sees a half-written Parquet file."""
    from harness.atomic import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(records_to_table(rows), tmp)


def read_records(path: Path, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """The raw record columns of a records file (derived columns a report added are left out).

    ``columns`` reads only those (Parquet is columnar: a reader that needs no
    chunk lists never decodes them, the bulk of a large run's bytes); ``filters``
    (pyarrow's DNF form) skips row groups by their statistics, then filters rows.
    """
    schema = RECORD_SCHEMA if columns is None else pa.schema([RECORD_SCHEMA.field(c) for c in columns])
    if filters is not None:
        table = pq.read_table(path, schema=RECORD_SCHEMA, columns=columns, filters=filters)
        return table.select(schema.names)
    return pq.read_table(path, schema=schema, columns=columns)


def _arrow_lists(kind: pa.DataType) -> Any:
    import pandas as pd

    return pd.ArrowDtype(kind) if pa.types.is_list(kind) else None


def table_to_frame(table: pa.Table) -> Any:
    """Records as a pandas frame whose list columns stay Arrow-backed.

    Why: converting ``chunk_times_ns`` to one numpy object per request costs
    about a second and hundreds of MB per million requests; kept as Arrow, it is
    read once and the metrics work on it with ``pyarrow.compute``.
    """
    return table.to_pandas(types_mapper=_arrow_lists)


def read_records_frame(path: Path, columns: list[str] | None = None) -> Any:
    """``read_records`` as a pandas frame (``table_to_frame``)."""
    return table_to_frame(read_records(path, columns))


def stream_tables(tables: Any, out: Path, schema: pa.Schema = RECORD_SCHEMA) -> int:
    """Write tables (any iterable) to ``out`` atomically, one after another; the row count.

    Why a writer and not a concatenation: a run's records can be millions of
    rows with 128 chunk stamps each; only one input is in memory at a time.
    """
    from harness.atomic import atomic_path

    rows = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in tables:
                for name in schema.names:  # a file of an older harness may lack a newer column
                    if name not in table.column_names:
                        table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
                writer.write_table(table.select(schema.names).cast(schema))
                rows += table.num_rows
    return rows


def row_groups(path: Path) -> Iterator[pa.Table]:
    """A records file's raw columns, one Parquet row group at a time."""
    source = pq.ParquetFile(path)
    names = [n for n in RECORD_SCHEMA.names if n in source.schema_arrow.names]
    for i in range(source.num_row_groups):
        yield source.read_row_group(i, columns=names)


def concat_record_files(paths: list[Path], out: Path) -> int:
    """Concatenate per-step record files into one run-level file (streamed); returns the row count."""
    return stream_tables((g for p in paths if p.exists() for g in row_groups(p)), out)
