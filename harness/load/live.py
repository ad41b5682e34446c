"""Running counts of a step while it runs, for the orchestrator's progress display.

Why: a step can run for minutes (140 s per step in the GPU scenario) and its
records reach the orchestrator only at its end. Each Locust process that runs
users keeps a ``LiveStats`` (request counts, errors by class, and a bounded
reservoir of TTFT and TPOT samples for running p50s), fed from
``StepState.complete`` (in the finisher, where records are made, never on the
read path: one add is a few integer and list operations). Once a second
(``PUBLISH_S``) a greenlet turns it into a small snapshot; a worker sends that
to the master over Locust's own channel (``MSG_PROGRESS``), and the master (or
the single local process) merges the latest snapshot of every process and
writes ``progress.json`` next to the records, atomically, for the orchestrator
to poll (``harness.progress``).

Why a reservoir and not every sample: a worker message must stay small and the
merge cheap at any request count. A uniform reservoir of ``RESERVOIR`` values
estimates a median to about ±3 percentile points, plenty for a progress line;
the reported figures still come from the records. Merged on the master, each
process's values are weighted by how many samples they stand for.

No gevent or Locust here: the orchestrator reads these snapshots too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.records import RequestRecord

RESERVOIR = 256
PUBLISH_S = 1.0
MSG_PROGRESS = "tokenbench_progress"
PROGRESS_FILE = "progress.json"


def progress_path(records_path: Path | str) -> Path:
    """Where the live progress of the step whose records go to ``records_path`` is written."""
    return Path(records_path).with_name(PROGRESS_FILE)


@dataclass
class Reservoir:
    """A uniform sample of at most ``size`` of the values seen (Vitter's algorithm R)."""

    size: int = RESERVOIR
    seen: int = 0
    values: list[float] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.size:
            self.values[slot] = value


def _ttft_tpot(record: RequestRecord) -> tuple[float | None, float | None]:
    """TTFT (from the scheduled time, as ``metrics`` measures it) and TPOT of one ok record, in ms."""
    if record.first_token_ns is None:
        return None, None
    ttft = (record.first_token_ns - record.scheduled_ns) / 1e6
    tokens = record.output_tokens or record.client_output_tokens or len(record.chunk_tokens or [])
    tpot = None
    if tokens >= 2 and record.end_ns is not None:
        tpot = (record.end_ns - record.first_token_ns) / 1e6 / (tokens - 1)
    return ttft, tpot


@dataclass
class LiveStats:
    """One process's running counts: measured and warm-up requests, ok, errors by class, latency samples."""

    done: int = 0
    warmup: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft_ms: Reservoir = field(default_factory=Reservoir)
    tpot_ms: Reservoir = field(default_factory=Reservoir)

    def add(self, record: RequestRecord) -> None:
        if record.warmup:
            self.warmup += 1
            return
        self.done += 1
        if record.error_class is not None:
            self.errors[record.error_class] = self.errors.get(record.error_class, 0) + 1
            return
        self.ok += 1
        ttft, tpot = _ttft_tpot(record)
        if ttft is not None:
            self.ttft_ms.add(ttft)
        if tpot is not None:
            self.tpot_ms.add(tpot)

    def snapshot(self, index: int, elapsed_s: float | None, reasons: list[str]) -> dict[str, Any]:
        """Plain data for a worker message (``reasons``: why this process's timing is in doubt now)."""
        return {
            "index": index,
            "elapsed_s": elapsed_s,
            "done": self.done,
            "warmup": self.warmup,
            "ok": self.ok,
            "errors": dict(self.errors),
            "ttft": {"seen": self.ttft_ms.seen, "values": [round(v, 3) for v in self.ttft_ms.values]},
            "tpot": {"seen": self.tpot_ms.seen, "values": [round(v, 3) for v in self.tpot_ms.values]},
            "reasons": list(reasons),
        }


def weighted_median(samples: list[dict[str, Any]]) -> float | None:
    """The median of several reservoirs, each value weighted by how many samples its reservoir stands for."""
    values: list[float] = []
    weights: list[float] = []
    for sample in samples:
        vals = sample.get("values") or []
        if vals:
            values += vals
            weights += [sample.get("seen", len(vals)) / len(vals)] * len(vals)
    if not values:
        return None
    order = np.argsort(values)
    cum = np.cumsum(np.asarray(weights)[order])
    at = int(np.searchsorted(cum, cum[-1] / 2.0))
    return float(np.asarray(values)[order][at])


def merge_snapshots(snapshots: list[dict[str, Any]], plan: LoadPlan) -> dict[str, Any]:
    """The step's progress from every process's latest snapshot: what ``progress.json`` holds."""
    errors: dict[str, int] = {}
    for snap in snapshots:
        for name, count in snap.get("errors", {}).items():
            errors[name] = errors.get(name, 0) + int(count)
    reasons = sorted({r for snap in snapshots for r in snap.get("reasons", [])})
    elapsed = [s["elapsed_s"] for s in snapshots if s.get("elapsed_s") is not None]
    return {
        "step_id": plan.step_id,
        "kind": plan.kind,
        "target": plan.target,
        "requests": plan.requests,
        "duration_s": plan.duration_s,
        "warmup_s": plan.warmup_s,
        "processes": plan.processes,
        "reporting": len(snapshots),
        "elapsed_s": max(elapsed) if elapsed else None,
        "done": sum(int(s.get("done", 0)) for s in snapshots),
        "warmup": sum(int(s.get("warmup", 0)) for s in snapshots),
        "ok": sum(int(s.get("ok", 0)) for s in snapshots),
        "errors": dict(sorted(errors.items())),
        "ttft_p50_ms": weighted_median([s["ttft"] for s in snapshots if "ttft" in s]),
        "tpot_p50_ms": weighted_median([s["tpot"] for s in snapshots if "tpot" in s]),
        "limited": bool(reasons),
        "reasons": reasons,
    }


def read_progress(path: Path) -> dict[str, Any] | None:
    """The latest progress snapshot, or None when there is none yet (or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class HealthWindow:
    """The harness-health flag over the last publish interval: event-loop lag p99 and CPU, as ``health.json``.

    The step's own verdict (``summarize_health``) covers the whole step; this one
    shows, while it runs, whether the client is keeping up right now.
    """

    lag_limit_ms: float
    cpu_limit_pct: float
    _lag_seen: int = 0
    _cpu_s: float | None = None
    _wall_s: float | None = None

    def reasons(self, lag_ms: list[float], cpu_s: float, wall_s: float) -> list[str]:
        """Why timing is in doubt since the last call (lag samples past ``_lag_seen``; CPU since then)."""
        out: list[str] = []
        window = lag_ms[self._lag_seen :]
        self._lag_seen = len(lag_ms)
        if window:
            p99 = float(np.percentile(window, 99))
            if p99 > self.lag_limit_ms:
                out.append(f"event-loop lag p99 {p99:.1f} ms > {self.lag_limit_ms:g} ms")
        if self._cpu_s is not None and self._wall_s is not None and wall_s > self._wall_s:
            pct = 100.0 * (cpu_s - self._cpu_s) / (wall_s - self._wall_s)
            if pct > self.cpu_limit_pct:
                out.append(f"a load process at {pct:.0f}% of a core")
        self._cpu_s, self._wall_s = cpu_s, wall_s
        return out
