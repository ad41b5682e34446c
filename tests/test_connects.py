"""Connect figures of a step (harness/connects.py), and records files from before the connect columns."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.matrix import Step
from harness.metrics import compute_step_metrics, records_frame
from harness.records import RECORD_SCHEMA, RequestRecord, read_records
from harness.scenario import Slo

STEP = Step("c4", "concurrency", 4.0)


def _rec(i: int, connect_ns: int | None, reused: bool | None, warmup: bool = False) -> RequestRecord:
    t = 1_000_000_000 + i * 10_000_000
    return RequestRecord(
        run_id="r",
        cell_id="c",
        step_id="c4",
        request_id=i,
        worker=0,
        api="completions",
        scheduled_ns=t,
        sent_ns=t,
        end_ns=t + 5_000_000,
        first_token_ns=t + 1_000_000,
        chunk_times_ns=[t + 1_000_000],
        chunk_tokens=[1],
        output_tokens=1,
        warmup=warmup,
        connect_ns=connect_ns,
        reused_connection=reused,
    )


def test_cold_step_counts_its_connects_and_their_percentiles() -> None:
    recs = [_rec(i, (i + 1) * 1_000_000, False) for i in range(4)] + [
        _rec(i, None, True) for i in range(4, 10)
    ]
    recs.append(_rec(10, 99_000_000, False, warmup=True))  # warm-up: not in the measured window
    m = compute_step_metrics(records_frame(recs), step=STEP, slo=Slo(), health={"connections": "cold"})
    h = m.harness
    assert (h.connections, h.connects) == ("cold", 4)
    assert h.connect_p50_ms == 2.5 and h.connect_max_ms == 4.0
    assert 3.9 < h.connect_p99_ms < 4.0
    # Cold: connects are expected, not a reason. The one reason is users held: these synthetic
    # records are one request at a time, not a closed loop of 4 users.
    assert len(h.reasons) == 1 and h.reasons[0].startswith("the 4 users held 12.5%")


def test_connects_left_by_a_prewarm_are_a_reason() -> None:
    recs = [_rec(0, 3_000_000, False)] + [_rec(i, None, True) for i in range(1, 5)]
    health = {"connections": "prewarm", "prewarm_s": 0.2, "reasons": ["earlier"]}
    h = compute_step_metrics(records_frame(recs), step=STEP, slo=Slo(), health=health).harness
    assert h.connects == 1 and h.prewarm_s == 0.2
    assert (
        h.reasons[0] == "earlier"
        and "1 measured requests opened a connection despite the prewarm" in h.reasons[1]
    )


def test_grpc_records_have_connects_but_no_connect_times() -> None:
    recs = [_rec(0, None, False)] + [_rec(i, None, True) for i in range(1, 4)]
    h = compute_step_metrics(
        records_frame(recs), step=STEP, slo=Slo(), health={"connections": "cold"}
    ).harness
    assert h.connects == 1 and h.connect_p50_ms is None and h.connect_max_ms is None


def test_records_written_before_the_connect_columns_still_read(tmp_path: Path) -> None:
    """An old records.parquet lacks both columns: it reads with them null, and the figures are unknown."""
    table = records_frame([_rec(i, None, None) for i in range(3)])
    old_schema = pa.schema([f for f in RECORD_SCHEMA if f.name not in ("connect_ns", "reused_connection")])
    old = pa.Table.from_pandas(table.drop(columns=["connect_ns", "reused_connection"]), schema=old_schema)
    pq.write_table(old, tmp_path / "records.parquet")
    read = read_records(tmp_path / "records.parquet")
    assert read.schema == RECORD_SCHEMA and read.column("reused_connection").null_count == 3
    h = compute_step_metrics(read.to_pandas(), step=STEP, slo=Slo(), health={}).harness
    assert h.connects is None and h.connect_p99_ms is None and h.connections is None
