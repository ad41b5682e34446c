"""Records reach disk during the step (part files), so a killed Locust or harness loses nothing written.

The end-to-end test SIGKILLs the Locust process group of a real step mid-way and checks
that the records written so far are on disk, merged by the runner and by the run folder.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fake_http import OpenAILike, serve
from harness.load.runner import run_step
from harness.load.spool import RecordSpool, merge_parts, part_files, parts_dir
from harness.records import RequestRecord, read_records, record_to_dict
from harness.report import load_run
from harness.rundir import RunDir
from load_plans import sim_plan


def _rec(i: int, worker: int = 0) -> RequestRecord:
    return RequestRecord("r", "c", "s", i, worker, "completions", i, i, i + 1)


def test_spool_writes_row_groups_and_the_final_part_replaces_them(tmp_path: Path) -> None:
    now = [0.0]
    parts = parts_dir(tmp_path / "records.parquet")
    spool = RecordSpool(parts, worker=1, row_group=3, flush_s=5.0, clock=lambda: now[0])
    for i in range(7):
        spool.add(_rec(i, 1))
    assert len(part_files(parts)) == 2 and spool.written == 6  # two full groups
    now[0] = 6.0
    spool.add(_rec(7, 1))  # a group is also written once flush_s has passed
    assert spool.written == 8
    other = RecordSpool(parts, worker=2, row_group=100)
    other.add(_rec(100, 2))
    other.flush()
    spool.final([record_to_dict(_rec(i, 1)) for i in range(8)])
    names = [p.name for p in part_files(parts)]
    assert names == ["p0001-final.parquet", "p0002-000001.parquet"]
    table = merge_parts(tmp_path / "records.parquet")
    assert table is not None and table.num_rows == 9
    assert read_records(tmp_path / "records.parquet").column("request_id").to_pylist() == [*range(8), 100]
    assert not parts.exists()  # merged parts are removed


@pytest.fixture
def fast_server() -> Iterator[str]:
    OpenAILike.bodies = []
    yield from serve(OpenAILike)


def _locust_groups() -> set[int]:
    groups = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "locust" in " ".join(child.cmdline()):
                groups.add(os.getpgid(child.pid))
        except (psutil.Error, ProcessLookupError):
            continue
    return groups


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_of_locust_mid_step_keeps_the_records_written(
    tmp_path: Path, fast_server: str, processes: int
) -> None:
    run = RunDir(tmp_path / "run")
    step_dir = run.step_dir("c", "s")
    plan = sim_plan(
        tmp_path,
        base_url=fast_server,
        target=4,
        duration_s=60.0,
        timeout_s=5.0,
        processes=processes,
        records_path=str(step_dir / "records.parquet"),
        health_path=str(step_dir / "health.json"),
    )
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(out=run_step(plan, step_dir, max_wall_s=120)))
    thread.start()
    parts = parts_dir(plan.records_path)
    deadline = time.monotonic() + 60
    while len(part_files(parts)) < 2 * processes and time.monotonic() < deadline:
        time.sleep(0.1)
    on_disk = sum(read_records(p).num_rows for p in part_files(parts))
    groups = _locust_groups()
    assert groups, "Locust is running"
    for pgid in groups:
        os.killpg(pgid, signal.SIGKILL)
    thread.join(60)
    sent = len(OpenAILike.bodies)
    out = result["out"]
    rows = read_records(out.records_path).to_pylist()
    print(f"processes {processes}: sent {sent}, on disk at kill {on_disk}, recovered {len(rows)}, "
          f"returncode {out.returncode}")  # fmt: skip
    assert out.returncode is not None and out.returncode != 0
    assert len(rows) >= on_disk > 0
    assert {r["worker"] for r in rows} == set(range(processes)), "every process's records are kept"
    assert len({r["request_id"] for r in rows}) == len(rows)
    assert all(r["error_class"] is None for r in rows)
    assert any("recovered from its part files" in r for r in out.health["reasons"])
    assert run.merge() == len(rows)  # the run folder reads them too


def test_run_folder_recovers_parts_a_killed_harness_left(tmp_path: Path) -> None:
    """Harness and Locust both gone: only part files; ``merge`` (report, resume) builds the records."""
    run = RunDir(tmp_path / "run")
    step_dir = run.step_dir("c", "s")
    spool = RecordSpool(parts_dir(step_dir / "records.parquet"), worker=0, row_group=2)
    for i in range(5):
        spool.add(_rec(i))
    assert not (step_dir / "records.parquet").exists()
    assert run.merge() == 4  # two full groups were on disk; the fifth record was still pending
    assert (step_dir / "records.parquet").exists()
    assert read_records(run.path / "records.parquet").num_rows == 4
    _ = load_run  # the report reads run.path / "records.parquet", which merge wrote


def test_merge_streams_row_groups_keeps_every_row_sorted(tmp_path: Path) -> None:
    """Interleaved parts of three processes merge into bounded row groups, in schedule order, losing none."""
    import numpy as np
    import pyarrow.parquet as pq

    from harness.load.spool import read_parts

    rng = np.random.default_rng(3)
    parts = parts_dir(tmp_path / "records.parquet")
    expected = []
    for worker in range(3):
        spool = RecordSpool(parts, worker=worker, row_group=7)
        # completion order roughly follows the schedule, with some jitter (as in a real step)
        sched = np.sort(rng.integers(0, 10_000, 50)) + rng.integers(0, 300, 50)
        for i, t in enumerate(sched):
            rec = RequestRecord(
                "r", "c", "s", worker * 1000 + i, worker, "completions", int(t), int(t), int(t) + 5
            )
            rec.chunk_times_ns, rec.chunk_tokens, rec.coalesced_chunks = (
                [int(t) + 1, int(t) + 2],
                [1, 1],
                i % 2,
            )
            spool.add(rec)
            expected.append((int(t), worker * 1000 + i))
        spool.flush()
    reference = read_parts(parts)
    merged = merge_parts(tmp_path / "records.parquet", row_group=16)
    assert merged is not None and merged.num_rows == 150 and merged.chunks == 300 and merged.coalesced == 75
    meta = pq.ParquetFile(tmp_path / "records.parquet").metadata
    assert meta.num_row_groups == 10 and max(meta.row_group(i).num_rows for i in range(10)) == 16
    table = read_records(tmp_path / "records.parquet")
    keys = list(
        zip(table.column("scheduled_ns").to_pylist(), table.column("request_id").to_pylist(), strict=True)
    )
    assert keys == sorted(expected)  # every row, by schedule then id
    assert table.equals(reference)  # the same rows and values as merging all parts in memory
