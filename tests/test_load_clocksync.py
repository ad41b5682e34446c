"""Clock offset estimation (pure): the bound holds the true offset, fast exchanges win, bad input fails;
stamps mapped to the master's clock; what health.json says about workers."""

from __future__ import annotations

import random
import time

import pyarrow as pa
import pytest

from harness.load.clocksync import (
    TEST_OFFSET_ENV,
    ClockEstimate,
    ClockSyncError,
    Exchange,
    apply_test_offset,
    estimate,
)
from harness.load.wire import shift_stamps, table_from_bytes, table_to_bytes
from harness.load.workerhealth import WorkerFacts, amend_health
from harness.records import RequestRecord, records_to_table


def exchange(true_offset: int, send_at: int, out_ns: int, back_ns: int, think_ns: int = 1_000) -> Exchange:
    """A ping-pong with one-way delays ``out_ns``/``back_ns`` and a worker clock ``true_offset`` ahead."""
    t1 = send_at
    t2 = t1 + out_ns + true_offset
    t3 = t2 + think_ns
    t4 = t3 - true_offset + back_ns
    return Exchange(t1, t2, t3, t4)


def test_symmetric_delays_give_the_offset_exactly() -> None:
    ex = [exchange(5_000_000_000, i * 10_000_000, 200_000, 200_000) for i in range(8)]
    est = estimate(ex)
    assert est.offset_ns == 5_000_000_000
    assert est.round_trip_ns == 400_000
    assert est.uncertainty_ns <= 200_001
    assert est.exchanges == 8 and est.kept == 4


@pytest.mark.parametrize("offset", [0, 1, -7_300_000_000, 123_456_789_012])
def test_the_interval_always_holds_the_true_offset(offset: int) -> None:
    rng = random.Random(offset)
    ex = [
        exchange(offset, i * 5_000_000, rng.randint(30_000, 3_000_000), rng.randint(30_000, 3_000_000))
        for i in range(24)
    ]
    est = estimate(ex)
    assert abs(est.offset_ns - offset) <= est.uncertainty_ns
    # The kept exchanges are the fastest: the bound is no wider than the fastest round trip's half.
    assert est.uncertainty_ns <= min(e.round_trip_ns for e in ex) // 2 + 1


def test_slow_exchanges_do_not_widen_the_estimate() -> None:
    fast = [exchange(42_000_000, i, 100_000, 100_000) for i in range(4)]
    slow = [exchange(42_000_000, 100 + i, 40_000_000, 1_000) for i in range(20)]  # queued pings, skewed
    est = estimate(slow + fast)
    assert abs(est.offset_ns - 42_000_000) <= est.uncertainty_ns <= 100_001
    assert not est.doubtful


def test_a_wide_bound_is_doubtful() -> None:
    est = estimate([exchange(0, 0, 2_000_000, 2_000_000)])
    assert est.uncertainty_ns > 1_000_000 and est.doubtful
    assert est.to_dict()["clock_uncertainty_ms"] == pytest.approx(est.uncertainty_ns / 1e6)


def test_inconsistent_exchanges_fall_back_to_the_fastest() -> None:
    a = exchange(0, 0, 100_000, 100_000)
    b = exchange(10_000_000, 1_000_000, 150_000, 150_000)  # the worker's clock stepped by 10 ms
    est = estimate([a, b])
    assert est.offset_ns == pytest.approx(0, abs=100_001)
    assert est.uncertainty_ns <= 100_001


def test_no_usable_exchange_is_an_error() -> None:
    with pytest.raises(ClockSyncError, match="no usable clock exchange among 0"):
        estimate([])
    with pytest.raises(ClockSyncError, match="among 1"):
        estimate([Exchange(10, 0, 0, 5)])  # answered before it was asked: t4 < t1


def test_to_master_maps_a_worker_stamp() -> None:
    est = estimate([exchange(3_000, 0, 10, 10, think_ns=0)])
    assert est.to_master(10_000) == 10_000 - est.offset_ns


def test_apply_test_offset_shifts_this_process_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "monotonic_ns", time.monotonic_ns)  # restored after the test
    assert apply_test_offset({}) == 0
    before = time.monotonic_ns()
    assert apply_test_offset({TEST_OFFSET_ENV: "60000000000"}) == 60_000_000_000
    assert time.monotonic_ns() - before >= 60_000_000_000


def _record(i: int, base: int) -> RequestRecord:
    return RequestRecord(
        run_id="r", cell_id="c", step_id="s", request_id=i, worker=1, api="completions",
        scheduled_ns=base, sent_ns=base + 1, end_ns=base + 9, requested_prompt_tokens=4,
        requested_output_tokens=3, status=200, first_token_ns=base + 3 if i else None,
        chunk_times_ns=[base + 3, base + 5, base + 9] if i else [],
    )  # fmt: skip


def test_shift_stamps_moves_every_stamp_and_nothing_else() -> None:
    table = records_to_table([_record(0, 1_000_000), _record(1, 2_000_000), _record(2, 3_000_000)])
    back = table_from_bytes(table_to_bytes(table))
    assert back.equals(table)
    shifted = shift_stamps(back, 500_000).to_pylist()
    rows = table.to_pylist()
    for old, new in zip(rows, shifted, strict=True):
        for name in ("scheduled_ns", "sent_ns", "end_ns"):
            assert new[name] == old[name] - 500_000
        assert new["first_token_ns"] == (
            None if old["first_token_ns"] is None else old["first_token_ns"] - 500_000
        )
        assert new["chunk_times_ns"] == [t - 500_000 for t in old["chunk_times_ns"]]
        untouched = {k: v for k, v in old.items() if not k.endswith("_ns")}
        assert {k: v for k, v in new.items() if not k.endswith("_ns")} == untouched
    assert shift_stamps(table, 0) is table
    assert isinstance(shift_stamps(table, 7).column("chunk_times_ns").type, pa.ListType)


def _clock(uncertainty_ns: int, offset_ns: int = 0) -> ClockEstimate:
    return ClockEstimate(offset_ns, uncertainty_ns, 2 * uncertainty_ns, exchanges=24, kept=4)


def test_health_gets_each_workers_host_and_clock_and_a_fine_step_stays_unflagged() -> None:
    health = {"workers": [{"index": 0}, {"index": 1}], "limited": False, "reasons": []}
    facts = [
        WorkerFacts(1, "b", _clock(300_000, 5_000_000_000), False),
        WorkerFacts(0, "a", _clock(200_000), False),
    ]
    amend_health(health, facts)
    assert health["limited"] is False and health["reasons"] == []
    assert [c["index"] for c in health["clock_sync"]] == [0, 1]
    assert health["workers"][1]["host"] == "b"
    assert health["workers"][1]["clock_offset_ms"] == 5000.0
    assert health["workers"][1]["clock_uncertainty_ms"] == 0.3
    assert "refused_workers" not in health


def test_an_uncertain_clock_or_a_lost_worker_flags_the_step() -> None:
    health: dict = {"workers": [{"index": 0}], "limited": False, "reasons": []}
    amend_health(health, [WorkerFacts(0, "a", _clock(1_000_001), False)], refused=2)
    assert health["limited"] is True
    assert health["reasons"] == [
        "load worker 0 on a: clock offset uncertain by 1.00 ms (> 1 ms): cross-worker timing is in doubt"
    ]
    assert health["refused_workers"] == 2
    health = {"workers": [], "limited": False, "reasons": []}
    amend_health(health, [WorkerFacts(3, "c", _clock(1_000_000), True)])  # exactly 1 ms is not doubtful
    assert (
        health["limited"] is True and len(health["reasons"]) == 1 and "lost mid-step" in health["reasons"][0]
    )
    assert health["clock_sync"][0]["lost"] is True
