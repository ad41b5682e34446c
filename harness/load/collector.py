"""Per-process step bookkeeping, harness self-diagnosis, and the master that gathers it all.

Why here and not in Locust's stats: Locust's statistics round response times
and know nothing about tokens or schedules, so every number tokenbench reports
comes from ``RequestRecord``s. Each Locust process that runs users keeps a
``StepState`` (stop rule, outstanding requests, records, loop-lag samples)
and appends its finished records to part files as it goes (``spool``), so a
late failure loses nothing already measured; when its share of the step is
over it writes its final part and sends its health report to the master with
``runner.send_message`` (Locust's own worker channel). The master's
``MasterCollector`` merges the parts into the step's Parquet and writes the
health JSON once every worker has reported, or with whatever is on disk if
the run is cut short.

Self-diagnosis: a greenlet in every process sleeps 5 ms in a loop and records
how late it wakes. If the event loop is late, every socket-read timestamp is
late too, so ``limited`` (loop-lag p99 > 5 ms) tells the reader that the
*client* may have been the bottleneck, not the server.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import write_json
from harness.load.live import HealthWindow, LiveStats
from harness.load.plan import LoadPlan
from harness.load.prewarm import prewarm_reasons, summarize_prewarm
from harness.load.schedule import worker_share
from harness.load.spool import Merged, RecordSpool, merge_parts
from harness.records import RequestRecord, write_records

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.005
LAG_LIMIT_MS = 5.0
CPU_LIMIT_PCT = 90.0
COALESCED_LIMIT = 0.2
MAX_LAG_SAMPLES = 200_000
MSG_DONE = "tokenbench_done"


def request_key(step_id: str, request_id: int) -> str:
    """The ``X-Request-Id`` a request carries: step plus record id, unique within a run's server.

    Why send it: a server that logs request ids (the sim's write log, vLLM's
    access log) can then be joined to the client's records, which is how the
    fidelity benchmark compares what the harness measured with what the server
    really did. The step prefix keeps ids unique when one server serves many steps.
    """
    return f"{step_id}-{request_id}"


def cpu_seconds() -> float:
    """User + system CPU of this process (each Locust process reports its own)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class StepState:
    """One process's share of a step: the stop rule, outstanding work, and its records.

    ``admit`` is the single gate every request passes (closed and open loop):
    it applies the warm-up window and the stop rule against the *scheduled*
    time. A request is ``outstanding`` from admission until its record is in,
    so a killed or never-sent request is visible as ``cancelled``.
    """

    plan: LoadPlan
    worker_index: int = 0
    workers: int = 1
    now_ns: Callable[[], int] = time.monotonic_ns
    t0_ns: int | None = None
    outstanding: int = 0
    unsent: int = 0
    issuing_over: bool = False
    records: list[RequestRecord] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    completed: int = 0  # finished records (those without a spool are also kept in ``records``)
    lag_ms: list[float] = field(default_factory=list)
    on_done: Callable[[], None] | None = None
    spool: RecordSpool | None = None  # where finished records go to disk during the step
    live: LiveStats = field(default_factory=LiveStats)  # running counts for the progress display
    window: HealthWindow = field(default_factory=lambda: HealthWindow(LAG_LIMIT_MS, CPU_LIMIT_PCT))
    _measured: int = 0
    _seq: int = 0
    _done_fired: bool = False
    _cpu0: float = field(default_factory=cpu_seconds)
    _wall0: float = field(default_factory=time.monotonic)

    @property
    def quota(self) -> int | None:
        if self.plan.requests is None:
            return None
        return worker_share(self.plan.requests, self.worker_index, self.workers)

    def start(self, at_ns: int | None = None) -> int:
        """Mark t0 (first call only): when this process starts issuing (``at_ns`` or now)."""
        if self.t0_ns is None:
            self.t0_ns = self.now_ns() if at_ns is None else at_ns
            self._cpu0, self._wall0 = cpu_seconds(), time.monotonic()
        return self.t0_ns

    def is_warmup(self, scheduled_ns: int) -> bool:
        t0 = self.start(scheduled_ns)
        return scheduled_ns < t0 + int(self.plan.warmup_s * 1e9)

    def admit(self, scheduled_ns: int) -> bool:
        """Whether a request scheduled at ``scheduled_ns`` is issued; False ends issuing for good.

        The first admission (closed loop) or the arrival pool's creation (open
        loop) sets t0, so warm-up and duration windows are per process.
        """
        if self.issuing_over:
            return False
        if not self.is_warmup(scheduled_ns):
            assert self.t0_ns is not None
            end = self.issue_end_ns
            if end is not None:
                if scheduled_ns >= end:
                    self.close_issuing()
                    return False
            else:
                quota = self.quota
                assert quota is not None
                if self._measured >= quota:
                    self.close_issuing()
                    return False
                self._measured += 1
        self.outstanding += 1
        return True

    @property
    def issue_end_ns(self) -> int | None:
        """Duration mode: when issuing stops (t0 + warm-up + duration); None in request-count mode."""
        if self.plan.duration_s is None or self.t0_ns is None:
            return None
        return self.t0_ns + int((self.plan.warmup_s + self.plan.duration_s) * 1e9)

    def reserve(self) -> None:
        """A closed-loop user handed its next request to the reader thread (``nativeread`` chaining).

        It is outstanding from now, so the process cannot count itself done
        while the thread may still send it; ``release`` undoes this when the
        thread did not send it. Chaining is only used in duration mode, where
        a request sent before ``issue_end_ns`` (the thread's deadline) is
        admitted whatever its send time, so nothing else is counted here.
        """
        self.outstanding += 1

    def release(self) -> None:
        """A reserved request the reader thread did not send (deadline, closed connection)."""
        self.outstanding -= 1
        self._check_done()

    def drop_unsent(self, count: int) -> None:
        """Admitted arrivals that never got a free user before the window closed."""
        self.unsent += count
        self.outstanding -= count
        self._check_done()

    def next_request_id(self) -> int:
        """Unique across workers: the worker index in the high digits."""
        self._seq += 1
        return self.worker_index * 1_000_000_000 + self._seq

    def complete(self, record: RequestRecord, text: str = "") -> None:
        """Count a finished record; with a spool it goes to disk and is not kept here (bounded memory)."""
        self.completed += 1
        self.live.add(record)
        if self.spool is not None:
            self.spool.add(record, text)
        else:
            self.records.append(record)
            self.texts.append(text)
        self.outstanding -= 1
        self._check_done()

    def close_issuing(self) -> None:
        self.issuing_over = True
        self._check_done()

    @property
    def done(self) -> bool:
        return self._done_fired

    def _check_done(self) -> None:
        if self.issuing_over and self.outstanding <= 0 and not self._done_fired:
            self._done_fired = True
            if self.on_done is not None:
                self.on_done()

    def run_lag_sampler(self) -> None:
        """Greenlet body: sample event-loop lag until this process's share is done."""
        import gevent

        while not self._done_fired:
            t = time.perf_counter_ns()
            gevent.sleep(LAG_INTERVAL_S)
            over_ms = (time.perf_counter_ns() - t) / 1e6 - LAG_INTERVAL_S * 1e3
            if self.t0_ns is not None and len(self.lag_ms) < MAX_LAG_SAMPLES:
                self.lag_ms.append(max(0.0, over_ms))

    def live_snapshot(self) -> dict[str, Any]:
        """This process's running counts and its health since the last call (``harness.load.live``)."""
        elapsed = None if self.t0_ns is None else (self.now_ns() - self.t0_ns) / 1e9
        reasons = self.window.reasons(self.lag_ms, cpu_seconds(), time.monotonic())
        return self.live.snapshot(self.worker_index, elapsed, reasons)

    def report(self) -> dict[str, Any]:
        """This process's diagnosis, as plain data for a worker message."""
        wall = max(time.monotonic() - self._wall0, 1e-9)
        cpu = cpu_seconds() - self._cpu0
        return {
            "index": self.worker_index,
            "requests": self.completed,
            "cancelled": max(self.outstanding, 0),
            "unsent": self.unsent,
            "cpu_s": cpu,
            "wall_s": wall,
            "lag_ms": [round(v, 4) for v in self.lag_ms],
            "done": self._done_fired,
        }


def plan_notes(plan: LoadPlan) -> list[str]:
    """What the plan itself says about how far to trust the step (shown with the health reasons)."""
    notes: list[str] = []
    if plan.tls_insecure_skip_verify:
        notes.append(
            "TLS certificate verification was off (insecure_skip_verify): the server was not authenticated"
        )
    return notes


def summarize_health(
    reports: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    expected: int,
    notes: list[str] | None = None,
    counts: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Aggregate per-process reports into the step's ``health.json`` (``notes``: from ``plan_notes``).

    ``counts`` (chunks, coalesced chunks), when given, replaces counting them in ``rows``:
    the master counts them while it merges, without holding the step's records.
    """
    lags = np.array([v for r in reports for v in r.get("lag_ms", [])], dtype=float)
    cpu_s = float(sum(r.get("cpu_s", 0.0) for r in reports))
    wall = max((r.get("wall_s", 0.0) for r in reports), default=0.0)
    if counts is None:
        chunks = sum(len(r.get("chunk_times_ns") or []) for r in rows)
        coalesced = sum(int(r.get("coalesced_chunks") or 0) for r in rows)
    else:
        chunks, coalesced = counts
    health: dict[str, Any] = {
        "loop_lag_p50_ms": float(np.percentile(lags, 50)) if lags.size else None,
        "loop_lag_p99_ms": float(np.percentile(lags, 99)) if lags.size else None,
        "loop_lag_max_ms": float(lags.max()) if lags.size else None,
        "client_cpu_s": cpu_s,
        "client_cpu_pct": 100.0 * cpu_s / wall if wall > 0 else None,
        "coalesced_chunk_fraction": coalesced / chunks if chunks else None,
        "cancelled": int(sum(r.get("cancelled", 0) for r in reports)),
        "unsent": int(sum(r.get("unsent", 0) for r in reports)),
        "workers": [
            {
                "index": r.get("index"),
                "requests": r.get("requests", 0),
                "cancelled": r.get("cancelled", 0),
                "cpu_s": r.get("cpu_s"),
                "cpu_pct": 100.0 * r["cpu_s"] / r["wall_s"] if r.get("wall_s") else None,
                "done": r.get("done", False),
                "reader": r.get("reader"),
                "reader_responses": r.get("reader_responses"),
                "reader_cpu_s": r.get("reader_cpu_s"),
                "reader_stamps": r.get("reader_stamps"),
            }
            for r in sorted(reports, key=lambda r: r.get("index", 0))
        ],
        "limited": False,
        "reasons": [],
    }
    reasons: list[str] = health["reasons"]
    p99 = health["loop_lag_p99_ms"]
    if p99 is not None and p99 > LAG_LIMIT_MS:
        native = bool(reports) and all(str(r.get("reader", "")).startswith("native") for r in reports)
        # With the native reader a busy loop no longer delays read stamps (the kernel's, on arrival), but
        # it still delays what Python sends: an open-loop request leaves after its scheduled time, and a
        # closed-loop user's next request waits where the reader thread could not chain it.
        late = (
            "requests Python sends go late (reads are stamped on arrival by the native reader)"
            if native
            else "client timestamps are late"
        )
        reasons.append(f"event-loop lag p99 {p99:.1f} ms > {LAG_LIMIT_MS:g} ms: {late}")
    for w in health["workers"]:
        if w["cpu_pct"] is not None and w["cpu_pct"] > CPU_LIMIT_PCT:
            reasons.append(f"load process {w['index']} used {w['cpu_pct']:.0f}% of a core")
    frac = health["coalesced_chunk_fraction"]
    if frac is not None and frac > COALESCED_LIMIT:
        reasons.append(f"{100 * frac:.0f}% of chunks arrived coalesced with another: ITL partly in doubt")
    if health["unsent"]:
        reasons.append(
            f"{health['unsent']} scheduled requests were never sent: every user was busy "
            "(raise max_concurrency, or the server is past saturation)"
        )
    if len(reports) < expected:
        seen = {r.get("index") for r in reports}
        missing = [i for i in range(expected) if i not in seen]
        reasons.append(
            f"load process(es) {missing} never reported: only the records they had written so far are kept"
        )
    reasons.extend(notes or [])
    health["limited"] = p99 is not None and p99 > LAG_LIMIT_MS
    return health


@dataclass
class MasterCollector:
    """Gathers records and reports on the master (or the single local process) and writes the step files."""

    plan: LoadPlan
    expected: int
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    on_all_done: Callable[[], None] | None = None
    written: bool = False
    count: int = 0
    lost: set[int] = field(default_factory=set)  # workers that died before reporting (distributed)
    # Adds to the health before it is written (distributed: worker hosts, clocks, lost workers).
    amend: Callable[[dict[str, Any]], None] | None = None

    def add_report(self, report: dict[str, Any]) -> None:
        self.reports[int(report.get("index", 0))] = report
        self._maybe_done()

    def mark_lost(self, index: int) -> None:
        """Stop waiting for a worker that will never report; its parts so far are merged."""
        self.lost.add(index)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.all_reported and self.on_all_done is not None:
            self.on_all_done()

    @property
    def all_reported(self) -> bool:
        return len(self.reports.keys() | self.lost) >= self.expected

    def write(self) -> None:
        """Merge the processes' part files into the records (Parquet), write health (JSON); atomic."""
        path = Path(self.plan.records_path)
        merged = merge_parts(path)
        if merged is None:
            merged = Merged(0, 0, 0)
            write_records(path, [])
        reports = list(self.reports.values())
        health = summarize_health(
            reports, [], self.expected, plan_notes(self.plan), counts=(merged.chunks, merged.coalesced)
        )
        health.update(summarize_prewarm([r.get("prewarm") or {} for r in reports], self.plan.connections))
        health["reasons"].extend(prewarm_reasons(health))
        if self.amend is not None:
            self.amend(health)
        write_json(Path(self.plan.health_path), health)
        self.written = True
        self.count = merged.num_rows
        log.info("tokenbench: wrote %d records to %s", merged.num_rows, path)
