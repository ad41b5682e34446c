"""Records on disk while the step runs: each Locust process appends its finished records to part files.

Why: records used to live only in memory until a process's share of the step
was over (then they travelled to the master in worker messages). A late
failure lost them all: 2,000 users under ``ulimit -n 1024`` measured 71,886
requests and kept none, and a killed Locust left nothing. Now every process
writes its finished records in row groups of ``ROW_GROUP`` (or at least every
``FLUSH_S``) to files of its own under ``<records>.parts/``; a killed step
loses at most the last unflushed group per process.

Why one small Parquet file per group and not one growing file: a Parquet file
is readable only once its footer is written, which a SIGKILLed writer never
does. Each part is written atomically, so whatever is on disk is readable.

Each part is final when written: the tokenizer counts (``finalize``,
``tokencount.TokenCounter``) are added in the write job, so at the normal end
of its share a process only writes its last group and waits for its writes
(``close``); it never holds all its records. (A process without a spool
during the step writes one *final* part instead, ``final``.) The master
(or the one local process) merges the parts into ``records.parquet``
(``merge_parts``: it reads only the sort keys of all parts, then writes the
merged file row group by row group, holding only the parts a group needs,
so the master's memory does not grow with the step). The orchestrator
(``runner``, ``rundir``) merges whatever parts a killed step left. Worker messages now carry only the health report.

The flush runs in the ``Finisher`` (where records are made), never on the read
path, and hands the whole part, the Arrow table's build included, to
``submit`` (in Locust, gevent's thread pool), so the event loop only swaps two
lists: the build is Python work (about 20 µs a record on a slow 2-core VM, so
24 ms for the 1,200 records of a 2-second group at 1,024 streams) and in a
thread it shares the GIL in 5 ms slices instead of stopping the loop; pyarrow
releases the GIL while it encodes. The records are not touched after they are
handed over. ``close`` (or ``final``) waits for those writes first.

No gevent or Locust here: the orchestrator reads part files too.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.atomic import atomic_path
from harness.records import (
    RECORD_SCHEMA,
    ROW_GROUP_ROWS,
    RequestRecord,
    read_records,
    records_to_table,
    stream_tables,
)

ROW_GROUP = 256
FLUSH_S = 2.0
FINAL = "final"
MERGE_ROW_GROUP = ROW_GROUP_ROWS


log = logging.getLogger(__name__)


def parts_dir(records_path: Path | str) -> Path:
    """Where the part files of the step whose merged records go to ``records_path`` live."""
    path = Path(records_path)
    return path.with_name(path.name + ".parts")


@dataclass
class RecordSpool:
    """One process's part files: ``add`` each finished record; ``final`` once with all of them."""

    directory: Path
    worker: int
    row_group: int = ROW_GROUP
    flush_s: float = FLUSH_S
    clock: Callable[[], float] = time.monotonic
    # Runs a write off the event loop and returns something with ``get()``; None: write inline.
    submit: Callable[[Callable[[], None]], Any] | None = None
    # Makes a part's table final before it is written (``tokencount.TokenCounter``: tokenizer counts
    # from the streamed texts); runs in the write job, off the event loop.
    finalize: Callable[[pa.Table, list[str]], pa.Table] | None = None
    pending: list[RequestRecord] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    written: int = 0
    _seq: int = 0
    _inflight: list[Any] = field(default_factory=list)
    _last: float | None = None

    def add(self, record: RequestRecord, text: str = "") -> None:
        """Keep ``record`` (and its streamed ``text``, for ``finalize``); write a part when a group is
        full or ``flush_s`` has passed since the last."""
        pending = self.pending
        pending.append(record)
        self.texts.append(text)
        if self._last is None:
            self._last = self.clock()
        if len(pending) >= self.row_group or self.clock() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending records as one part file (atomically); no-op when none are pending."""
        self._last = self.clock()
        if not self.pending:
            return
        self._seq += 1
        name, records, texts = f"p{self.worker:04d}-{self._seq:06d}.parquet", self.pending, self.texts
        self.written += len(records)
        self.pending, self.texts = [], []
        if self.submit is None:
            self._write(name, records_to_table(records), texts)
        else:
            self._inflight = [job for job in self._inflight if not job.ready()]
            self._inflight.append(self.submit(lambda: self._write(name, records_to_table(records), texts)))

    def close(self) -> None:
        """The end of this process's share: write what is pending and wait for every write.

        Every part is final already (``finalize``), so nothing is rewritten: the
        step's records are the incremental parts themselves.
        """
        self._wait()
        submit, self.submit = self.submit, None
        try:
            self.flush()  # the last group inline, as the final part was: the thread pool may be shutting down
        finally:
            self.submit = submit

    def _wait(self) -> None:
        for job in self._inflight:
            try:
                job.get()
            except Exception:  # noqa: BLE001 - a failed write loses its group, as a kill would
                log.exception("tokenbench: failed to write a records part")
        self._inflight = []

    def final(self, rows: list[dict[str, Any]]) -> None:
        """All of this process's records, finalized: one part that replaces the incremental ones.

        For a process that kept its records in memory (no spool during the step);
        a spooling process calls ``close`` instead.
        """
        for job in self._inflight:
            try:
                job.get()
            except Exception:  # noqa: BLE001 - the final part below holds every record anyway
                pass
        self._inflight = []
        self._write(f"p{self.worker:04d}-{FINAL}.parquet", records_to_table(rows), None)
        self.pending, self.texts = [], []
        for old in self.directory.glob(f"p{self.worker:04d}-[0-9]*.parquet"):
            old.unlink(missing_ok=True)

    def _write(self, name: str, table: pa.Table, texts: list[str] | None) -> None:
        if self.finalize is not None and texts is not None:
            table = self.finalize(table, texts)
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.directory / name) as tmp:
            pq.write_table(table, tmp)


def part_files(directory: Path) -> list[Path]:
    """The parts to merge: per process its final part if it wrote one, else its incremental parts."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.glob("p*.parquet") if not p.name.startswith("."))
    finals = {p.name.split("-")[0] for p in files if p.stem.endswith(FINAL)}
    return [p for p in files if p.stem.endswith(FINAL) or p.name.split("-")[0] not in finals]


def read_parts(directory: Path) -> pa.Table:
    """Every record the step's processes put on disk, in one table (sorted by schedule, then id).

    For tests and small steps; ``merge_parts`` never holds the whole step like this.
    """
    tables = []
    for path in part_files(directory):
        try:
            tables.append(read_records(path))
        except (OSError, pa.ArrowException):
            continue  # cannot happen for an atomically written part; a foreign file is skipped
    table = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    return table.sort_by([("scheduled_ns", "ascending"), ("request_id", "ascending")])


@dataclass(frozen=True)
class Merged:
    """What ``merge_parts`` wrote: rows, and the chunk counts the step's health needs."""

    num_rows: int
    chunks: int
    coalesced: int


def _sort_keys(paths: list[Path]) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Readable parts, and for every row its part index and its row within the part, in merged order.

    Only the two sort columns are read: 16 bytes a request, whatever the chunk lists hold.
    """
    kept, keys = [], []
    for path in paths:
        try:
            keys.append(read_records(path, columns=["scheduled_ns", "request_id"]))
            kept.append(path)
        except (OSError, pa.ArrowException):
            continue  # cannot happen for an atomically written part; a foreign file is skipped
    sizes = np.array([k.num_rows for k in keys], dtype=np.int64)
    part = np.repeat(np.arange(len(kept), dtype=np.int64), sizes)
    row = np.arange(part.size, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    if not keys:
        return kept, part, row
    sched = np.concatenate([k.column("scheduled_ns").to_numpy(zero_copy_only=False) for k in keys])
    rid = np.concatenate([k.column("request_id").to_numpy(zero_copy_only=False) for k in keys])
    order = np.lexsort((rid, sched))  # by schedule, then id
    return kept, part[order], row[order]


def _merged_groups(paths: list[Path], part: np.ndarray, row: np.ndarray, size: int) -> Iterator[pa.Table]:
    """The rows in merged order, ``size`` at a time; a part is read when first needed, dropped after its last row.

    Parts hold records in completion order, which follows the schedule closely, so
    only the parts that straddle a group boundary are held at once.
    """
    last = np.zeros(len(paths), dtype=np.int64)
    np.maximum.at(last, part, np.arange(part.size, dtype=np.int64))
    cache: dict[int, pa.Table] = {}
    for start in range(0, part.size, size):
        p, r = part[start : start + size], row[start : start + size]
        by_part = np.argsort(p, kind="stable")
        pieces = []
        for pid in np.unique(p):
            if pid not in cache:
                cache[int(pid)] = read_records(paths[int(pid)])
            pieces.append(cache[int(pid)].take(pa.array(r[p == pid])))
        table = pa.concat_tables(pieces).take(pa.array(np.argsort(by_part, kind="stable")))
        for pid in [k for k in cache if last[k] < start + size]:
            del cache[pid]
        yield table


def merge_parts(
    records_path: Path | str, *, keep_parts: bool = False, row_group: int = MERGE_ROW_GROUP
) -> Merged | None:
    """Merge a step's part files into ``records_path`` (atomically, streamed); None when there are none.

    The output is sorted by schedule, then id, and written row group by row group
    (``row_group`` rows each), so memory stays bounded however long the step was.
    The parts are removed afterwards unless ``keep_parts``; a crash between the
    two steps leaves both, and the merged file wins (``rundir``).
    """
    directory = parts_dir(records_path)
    files = part_files(directory)
    if not files:
        return None
    paths, part, row = _sort_keys(files)
    chunks = coalesced = 0

    def counted(groups: Iterator[pa.Table]) -> Iterator[pa.Table]:
        nonlocal chunks, coalesced
        for table in groups:
            chunks += int(pc.sum(pc.list_value_length(table.column("chunk_times_ns"))).as_py() or 0)
            coalesced += int(pc.sum(table.column("coalesced_chunks")).as_py() or 0)
            yield table

    rows = stream_tables(counted(_merged_groups(paths, part, row, row_group)), Path(records_path))
    if not keep_parts:
        shutil.rmtree(directory, ignore_errors=True)
    return Merged(rows, chunks, coalesced)


__all__ = ["Merged", "RecordSpool", "merge_parts", "part_files", "parts_dir", "read_parts"]
