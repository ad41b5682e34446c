"""The vectorised list-column metrics equal the per-request reference they replaced, exactly.

Why a reference here: ITL, the chunk-token fallback for output counts and
chunks-per-token used to be Python loops over requests (slow for a million
requests, issue 11 §3). The loops below are those definitions, kept in the
test only; random records (missing lists, token lists of the wrong length,
zero-token chunks, failures, warm-up) must give bit-identical results, both
from hand-built frames (Python lists) and from frames read from Parquet
(Arrow-backed list columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.matrix import Step
from harness.metrics import compute_step_metrics, itl_samples_ms, per_request_frame, records_frame
from harness.records import read_records_frame, write_records
from harness.scenario import Slo

T0 = 7_000_000_000_000


def ref_request_itl(times: Any, tokens: Any) -> np.ndarray:
    if times is None or len(times) < 2:
        return np.empty(0)
    t = np.asarray(times, dtype="int64")
    if tokens is None or len(tokens) != len(t):
        k = np.ones(len(t), dtype="int64")
    else:
        k = np.asarray(tokens, dtype="int64")
    keep = k > 0
    t, k = t[keep], k[keep]
    if len(t) < 2:
        return np.empty(0)
    gaps_ms = np.diff(t) / 1e6
    return np.repeat(gaps_ms / k[1:], k[1:])


def ref_itl(rows: list[dict[str, Any]]) -> np.ndarray:
    parts = [
        ref_request_itl(r["chunk_times_ns"], r["chunk_tokens"])
        for r in rows
        if r["error_class"] is None and not r["warmup"]
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def ref_list_sum(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None or len(v) == 0 else float(np.sum(v)) for v in values])


def random_rows(seed: int, n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        chunks = int(rng.integers(0, 12))
        sched = T0 + int(rng.integers(0, 10**10))
        gaps = rng.integers(1, 50_000_000, size=chunks)
        times = (sched + 1_000_000 + np.cumsum(gaps)).tolist()
        kind = rng.integers(0, 5)
        if kind == 0:
            tokens: list[int] | None = None
        elif kind == 1:
            tokens = rng.integers(0, 4, size=max(chunks - 1, 0)).tolist()  # wrong length: one token each
        else:
            tokens = rng.integers(0, 4, size=chunks).tolist()  # zeros: role / usage-only chunks
        failed = rng.random() < 0.15
        rows.append(
            dict(
                run_id="r",
                cell_id="cell",
                step_id="s1",
                request_id=i,
                worker=0,
                api="completions",
                scheduled_ns=sched,
                sent_ns=sched,
                end_ns=(times[-1] if times else sched) + 1000,
                first_token_ns=times[0] if times else None,
                chunk_times_ns=None if chunks == 0 and rng.random() < 0.5 else times,
                chunk_tokens=tokens,
                output_tokens=None if rng.random() < 0.6 else int(rng.integers(1, 40)),
                client_output_tokens=None,
                error_class="timeout" if failed else None,
                warmup=bool(rng.random() < 0.1),
            )
        )
    return rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_itl_equals_the_per_request_reference_exactly(seed: int, tmp_path: Path) -> None:
    rows = random_rows(seed, 400)
    expected = ref_itl(rows)
    assert expected.size > 100  # the random records really exercise the pooling
    hand = pd.DataFrame(rows)  # Python lists and None, as a caller may build it
    assert np.array_equal(itl_samples_ms(hand), expected)
    write_records(tmp_path / "r.parquet", rows)
    read = read_records_frame(tmp_path / "r.parquet")  # Arrow-backed list columns
    assert np.array_equal(itl_samples_ms(read), expected)
    assert np.array_equal(itl_samples_ms(records_frame(rows)), expected)


def test_itl_never_bridges_two_requests() -> None:
    rows = random_rows(9, 2)
    rows[0].update(chunk_times_ns=[T0, T0 + 10_000_000], chunk_tokens=[1, 1], error_class=None, warmup=False)
    rows[1].update(chunk_times_ns=[T0 + 900_000_000], chunk_tokens=[1], error_class=None, warmup=False)
    assert itl_samples_ms(pd.DataFrame(rows)).tolist() == [10.0]


@pytest.mark.parametrize("seed", [4, 5])
def test_output_token_fallback_and_chunks_per_token_equal_the_reference(seed: int) -> None:
    rows = random_rows(seed, 300)
    frame = records_frame(rows)
    got = per_request_frame(frame)["output_tokens"].to_numpy()
    fallback = ref_list_sum([r["chunk_tokens"] for r in rows])
    known = np.array(
        [np.nan if r["output_tokens"] is None else r["output_tokens"] for r in rows], dtype=float
    )
    np.testing.assert_array_equal(got, np.where(np.isnan(known), fallback, known))

    m = compute_step_metrics(frame, step=Step("s1", "concurrency", 1.0), slo=Slo())
    measured_ok = [r for r in rows if not r["warmup"] and r["error_class"] is None]
    chunks = sum(0 if r["chunk_times_ns"] is None else len(r["chunk_times_ns"]) for r in measured_ok)
    ok_tokens = np.array([got[i] for i, r in enumerate(rows) if not r["warmup"] and r["error_class"] is None])
    assert m.chunks_per_token == chunks / float(np.nansum(ok_tokens))
    assert m.itl_ms is not None and m.itl_ms.count == ref_itl(rows).size


@pytest.mark.parametrize("seed", [6, 7])
def test_itl_without_zero_token_chunks_equals_the_reference(seed: int) -> None:
    """The fast path (every chunk carries tokens; one token each or several) gives the same samples."""
    rows = random_rows(seed, 300)
    for i, r in enumerate(rows):
        if r["chunk_tokens"] is not None:
            r["chunk_tokens"] = [1 if i % 2 else max(1, k) for k in r["chunk_tokens"]]
    expected = ref_itl(rows)
    assert expected.size > 100
    assert np.array_equal(itl_samples_ms(pd.DataFrame(rows)), expected)
    ones = [dict(r, chunk_tokens=None) for r in rows]  # no per-chunk counts: one token each
    assert np.array_equal(itl_samples_ms(pd.DataFrame(ones)), ref_itl(ones))
