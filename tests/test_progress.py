"""Live step progress: the running counts (``harness.load.live``) and what the display makes of them.

The end-to-end tests, which drive the real CLI against the sim backend under a
pseudo-terminal (``script``) and through a pipe, are in ``test_progress_e2e.py``.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from rich.console import Console

from harness.atomic import write_json
from harness.load.live import (
    HealthWindow,
    LiveStats,
    Reservoir,
    merge_snapshots,
    progress_path,
    read_progress,
    weighted_median,
)
from harness.load.plan import LoadPlan
from harness.progress import LiveProgress, StepView, duration_text
from harness.records import RequestRecord


def _plan(tmp: Path, **kw: object) -> LoadPlan:
    base: dict = dict(
        run_id="r", cell_id="cellA", step_id="c4", api="completions", base_url="http://x", model="m",
        kind="concurrency", target=4, prompts_path=str(tmp / "p.jsonl"),
        records_path=str(tmp / "records.parquet"), health_path=str(tmp / "health.json"),
    )  # fmt: skip
    base.update(kw)
    if "duration_s" not in kw and "requests" not in kw:
        base["requests"] = 100
    return LoadPlan(**base)


def _record(ttft_ms: float, tokens: int = 11, tpot_ms: float = 5.0, **kw: object) -> RequestRecord:
    first = int(1e9 + ttft_ms * 1e6)
    return RequestRecord(
        run_id="r", cell_id="cellA", step_id="c4", request_id=1, worker=0, api="completions",
        scheduled_ns=int(1e9), sent_ns=int(1e9), first_token_ns=first,
        end_ns=first + int((tokens - 1) * tpot_ms * 1e6), output_tokens=tokens, **kw,
    )  # fmt: skip


def test_reservoir_stays_bounded_and_samples_the_whole_stream() -> None:
    res = Reservoir(size=64, rng=random.Random(1))
    for v in range(10_000):
        res.add(float(v))
    assert res.seen == 10_000 and len(res.values) == 64
    # uniform over the stream, not the first 64: most kept values come from late in it
    assert sum(v >= 5_000 for v in res.values) > 16
    assert 3_000 < sorted(res.values)[32] < 7_000


def test_live_stats_counts_warmup_errors_and_latencies_apart() -> None:
    stats = LiveStats()
    for ms in (10.0, 20.0, 30.0):
        stats.add(_record(ms))
    stats.add(_record(99.0, warmup=True))
    stats.add(_record(5.0, error_class="timeout"))
    stats.add(_record(5.0, error_class="timeout"))
    stats.add(_record(5.0, error_class="http_500"))
    assert (stats.done, stats.warmup, stats.ok) == (6, 1, 3)
    assert stats.errors == {"timeout": 2, "http_500": 1}
    snap = stats.snapshot(2, 3.5, ["why"])
    assert snap["index"] == 2 and snap["elapsed_s"] == 3.5 and snap["reasons"] == ["why"]
    assert sorted(snap["ttft"]["values"]) == [10.0, 20.0, 30.0]  # warm-up and failed ones left out
    assert snap["tpot"]["values"] == [5.0, 5.0, 5.0]
    json.dumps(snap)  # plain data: it travels in a worker message


def test_weighted_median_weighs_each_reservoir_by_what_it_stands_for() -> None:
    # process A saw 1,000 requests at ~10 ms (kept 4), process B 10 at 100 ms (kept 4)
    a = {"seen": 1000, "values": [9.0, 10.0, 10.0, 11.0]}
    b = {"seen": 10, "values": [100.0, 100.0, 100.0, 100.0]}
    assert weighted_median([a, b]) in (10.0, 11.0)
    assert weighted_median([{"seen": 10, "values": [1.0, 2.0, 3.0]}]) == 2.0
    assert weighted_median([]) is None and weighted_median([{"seen": 0, "values": []}]) is None


def test_merge_sums_processes_and_flags_any_limited_one(tmp_path: Path) -> None:
    plan = _plan(tmp_path, processes=2)
    one, two = LiveStats(), LiveStats()
    for _ in range(3):
        one.add(_record(10.0))
    two.add(_record(20.0, error_class="timeout"))
    merged = merge_snapshots([one.snapshot(0, 2.0, []), two.snapshot(1, 3.0, ["lag"])], plan)
    assert merged["done"] == 4 and merged["ok"] == 3 and merged["errors"] == {"timeout": 1}
    assert merged["elapsed_s"] == 3.0 and merged["reporting"] == 2 and merged["requests"] == 100
    assert merged["ttft_p50_ms"] == 10.0 and merged["limited"] and merged["reasons"] == ["lag"]
    empty = merge_snapshots([], plan)
    assert empty["reporting"] == 0 and empty["ttft_p50_ms"] is None and not empty["limited"]


def test_health_window_judges_only_what_happened_since_the_last_look() -> None:
    window = HealthWindow(lag_limit_ms=5.0, cpu_limit_pct=90.0)
    lags = [0.1] * 200
    assert window.reasons(lags, cpu_s=0.0, wall_s=0.0) == []
    lags += [20.0] * 200  # a second of bad lag
    assert any("lag p99 20.0 ms" in r for r in window.reasons(lags, cpu_s=0.5, wall_s=1.0))
    lags += [0.1] * 200  # better again: the old samples no longer count
    assert window.reasons(lags, cpu_s=0.6, wall_s=2.0) == []
    assert any("100% of a core" in r for r in window.reasons(lags, cpu_s=1.6, wall_s=3.0))


def test_read_progress_tolerates_missing_and_torn_files(tmp_path: Path) -> None:
    path = progress_path(tmp_path / "records.parquet")
    assert path == tmp_path / "progress.json"
    assert read_progress(path) is None
    path.write_text("{not json")
    assert read_progress(path) is None
    write_json(path, {"done": 3})
    assert read_progress(path) == {"done": 3}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _snapshot(plan: LoadPlan, done: int, elapsed: float, **extra: object) -> dict:
    stats = LiveStats()
    for _ in range(done):
        stats.add(_record(12.0))
    merged = merge_snapshots([stats.snapshot(0, elapsed, [])], plan)
    merged.update(extra)
    return merged


def test_plain_mode_prints_a_line_every_interval_with_the_step_s_counts(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    out, clock = io.StringIO(), Clock()
    live = LiveProgress("plain", Console(file=out, width=300), every_s=10.0, clock=clock)
    with live.step(plan, (1, 3), (0, 2)) as tick:
        write_json(progress_path(plan.records_path), _snapshot(plan, 25, 4.0))
        clock.t += 5
        tick()
        assert out.getvalue() == ""  # not yet 10 s
        clock.t += 5
        tick()
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        line = lines[0]
        assert line.startswith("[cellA] c4 running (cell 2/3, step 1/2): 25/100 requests")
        assert "TTFT p50 12.0 ms" in line and "TPOT p50 5.0 ms" in line
        assert "errors none" in line and "harness ok" in line and "run ETA" in line
        errors = {"errors": {"timeout": 2}, "limited": True, "reasons": ["event-loop lag p99 9.0 ms > 5 ms"]}
        write_json(progress_path(plan.records_path), _snapshot(plan, 50, 8.0, **errors))
        clock.t += 3
        tick()
        assert len(out.getvalue().splitlines()) == 1
        clock.t += 7
        tick()
    second = out.getvalue().splitlines()[1]
    assert "50/100 requests" in second and "errors timeout 2" in second
    assert "harness LIMITED (event-loop lag p99 9.0 ms > 5 ms)" in second


def test_eta_counts_the_remaining_cells_and_steps(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    clock = Clock()
    live = LiveProgress("plain", None, clock=clock)
    with live.step(plan, (0, 2), (0, 2)) as tick:
        write_json(progress_path(plan.records_path), _snapshot(plan, 50, 5.0))
        clock.t += 10
        tick()
    # half a step took 10 s; the step then ended at 10 s: 3 steps left at 10 s each
    with live.step(plan, (0, 2), (1, 2)) as tick:
        write_json(progress_path(plan.records_path), _snapshot(plan, 0, 0.1))
        clock.t += 0.5
        tick()
        view = StepView(
            plan, (0, 2), (1, 2), started=clock.t, data=read_progress(progress_path(plan.records_path))
        )
        eta = live.eta(view, clock.t)
    assert eta is not None and abs(eta - 10.5 * 3) < 1e-6  # 10.5 s per step so far, 3 steps to go


def test_duration_steps_show_elapsed_against_the_duration_and_wait_for_locust(tmp_path: Path) -> None:
    plan = _plan(tmp_path, duration_s=60.0, warmup_s=10.0)
    out, clock = io.StringIO(), Clock()
    live = LiveProgress("plain", Console(file=out, width=300), every_s=1.0, clock=clock)
    with live.step(plan, (0, 1), (0, 1)) as tick:
        clock.t += 2
        tick()
        write_json(progress_path(plan.records_path), _snapshot(plan, 7, 35.0, warmup=3))
        clock.t += 2
        tick()
    first, second = out.getvalue().splitlines()
    assert "starting Locust (2 s)" in first and "harness -" in first
    assert "35/70 s, 7 requests (+3 warm-up)" in second


def test_rich_mode_redraws_with_each_snapshot_and_off_mode_shows_nothing(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    live = LiveProgress("rich", console, clock=clock)
    with live.step(plan, (0, 1), (0, 1)) as tick:
        for done in (10, 20):
            write_json(progress_path(plan.records_path), _snapshot(plan, done, 1.0))
            clock.t += 1
            tick()
    text = out.getvalue()
    assert "10/100 requests" in text and "20/100 requests" in text
    assert text.index("10/100 requests") < text.index("20/100 requests")
    assert "TTFT p50 12.0 ms" in text

    quiet_out = io.StringIO()
    quiet = LiveProgress.for_console(Console(file=quiet_out, force_terminal=True), quiet=True)
    assert quiet.mode == "off"
    with quiet.step(plan, (0, 1), (0, 1)) as tick:
        clock.t += 20
        tick()
    assert quiet_out.getvalue() == ""
    assert LiveProgress.for_console(Console(file=io.StringIO())).mode == "plain"


def test_duration_text() -> None:
    assert [duration_text(s) for s in (None, 4.4, 200, 3725)] == ["?", "4s", "3m20s", "1h02m"]
