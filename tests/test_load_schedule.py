"""Seeded Poisson arrivals and the open-loop arrival pool."""

from __future__ import annotations

import itertools

import gevent
import numpy as np
import pytest

from harness.load.schedule import ArrivalPool, derive_seed, poisson_arrivals, worker_share


def _gaps(rate: float, seed: int, n: int) -> np.ndarray:
    times = np.fromiter(poisson_arrivals(rate, seed, count=n), dtype=np.int64)
    return np.diff(np.concatenate([[0], times])) / 1e9


@pytest.mark.parametrize("rate", [5.0, 200.0])
def test_poisson_gaps_have_exponential_mean_and_cv(rate: float) -> None:
    gaps = _gaps(rate, seed=7, n=20_000)
    assert len(gaps) == 20_000
    assert abs(gaps.mean() - 1 / rate) / (1 / rate) < 0.03
    cv = gaps.std() / gaps.mean()
    assert 0.95 < cv < 1.05


def test_same_seed_same_schedule_other_seed_differs() -> None:
    a = list(poisson_arrivals(10.0, 1, count=500))
    b = list(poisson_arrivals(10.0, 1, count=500))
    c = list(poisson_arrivals(10.0, 2, count=500))
    assert a == b
    assert a != c


def test_arrivals_are_increasing_and_offset_by_start() -> None:
    base = list(poisson_arrivals(50.0, 3, count=100))
    shifted = list(poisson_arrivals(50.0, 3, count=100, start_ns=10**12))
    assert all(x < y for x, y in itertools.pairwise(base))
    assert base[0] > 0
    assert [s - 10**12 for s in shifted] == base


def test_horizon_stops_before_the_end_and_count_stops_exactly() -> None:
    arrivals = list(poisson_arrivals(100.0, 5, start_ns=1000, horizon_s=2.0))
    assert arrivals and arrivals[-1] < 1000 + 2 * 10**9
    assert 140 < len(arrivals) < 260  # 200 expected; ~7 sigma either side
    assert len(list(poisson_arrivals(100.0, 5, count=4097))) == 4097  # crosses an internal block


def test_bad_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="rate"):
        next(poisson_arrivals(0.0, 1))


def test_derive_seed_is_stable_and_distinct_per_worker_and_step() -> None:
    assert derive_seed(1, "r5", 0) == derive_seed(1, "r5", 0)
    seeds = {derive_seed(1, step, w) for step in ("r5", "r10") for w in range(4)}
    assert len(seeds) == 8


def test_superposed_worker_processes_give_full_rate() -> None:
    rate, workers, horizon = 40.0, 4, 50.0
    merged = sorted(
        t
        for w in range(workers)
        for t in poisson_arrivals(rate / workers, derive_seed(0, "r40", w), horizon_s=horizon)
    )
    gaps = np.diff(np.array(merged)) / 1e9
    assert abs(len(merged) / horizon - rate) / rate < 0.05
    assert 0.93 < gaps.std() / gaps.mean() < 1.07


def test_worker_share_splits_exactly() -> None:
    assert [worker_share(10, i, 3) for i in range(3)] == [4, 3, 3]
    assert sum(worker_share(7, i, 4) for i in range(4)) == 7
    with pytest.raises(ValueError):
        worker_share(5, 3, 3)


def test_arrival_pool_backlogs_when_users_are_busy_and_keeps_order() -> None:
    """One user, three arrivals due almost at once: the late ones wait in the backlog, in order."""
    clock = {"now": 0}
    arrivals = iter([1, 2, 3, 4])
    kept: list[int] = []

    def keep(ns: int) -> bool:
        if ns >= 4:
            return False
        kept.append(ns)
        return True

    pool = ArrivalPool(arrivals=arrivals, keep=keep, now_ns=lambda: clock["now"] + 10)
    got: list[int | None] = []

    def user() -> None:
        while (ns := pool.next_arrival()) is not None:
            got.append(ns)
            gevent.sleep(0.01)  # busy while the dispatcher hands out the rest

    g = gevent.spawn(user)
    gevent.sleep(0)
    pool.start()
    g.join(timeout=5)
    assert g.dead
    assert got == [1, 2, 3]
    assert kept == [1, 2, 3]
    assert pool.finished


def test_arrival_pool_releases_idle_users_on_stop() -> None:
    pool = ArrivalPool(arrivals=iter([10**18]), keep=lambda ns: True)
    results: list[int | None] = []
    users = [gevent.spawn(lambda: results.append(pool.next_arrival())) for _ in range(3)]
    pool.start()
    gevent.sleep(0.01)
    pool.stop()
    gevent.joinall(users, timeout=5)
    assert results == [None, None, None]


def test_arrival_pool_drops_the_backlog_at_the_deadline() -> None:
    """Duration mode: arrivals still waiting for a user when the window closes are reported, not sent."""
    import time

    start = time.monotonic_ns()
    arrivals = iter([start + i for i in range(5)])
    dropped: list[int] = []
    pool = ArrivalPool(
        arrivals=arrivals, keep=lambda ns: True, deadline_ns=start + 20_000_000, on_drop=dropped.append
    )
    got: list[int] = []

    def busy_user() -> None:
        ns = pool.next_arrival()
        assert ns is not None
        got.append(ns)
        gevent.sleep(0.2)  # stays busy past the deadline

    g = gevent.spawn(busy_user)
    gevent.sleep(0)
    pool.start()
    gevent.sleep(0.1)
    assert dropped == [4] and got == [start]
    assert pool.finished
    g.kill()
