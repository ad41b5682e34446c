"""Metrics computed from raw records, checked against numbers worked out by hand.

The three-request example is the one in docs/metrics.md; every expected value
below was computed on paper from the record times (in ms, offset by T0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.matrix import Step
from harness.metrics import (
    FRAME_COLUMNS,
    arrival_stats,
    compute_step_metrics,
    dist,
    itl_samples_ms,
    mean_in_flight,
    per_request_frame,
    records_frame,
)
from harness.records import ERROR_CLASSES, RequestRecord
from harness.scenario import Slo

T0 = 5_000_000_000_000  # a realistic monotonic_ns origin: arithmetic must not lose precision
MS = 1_000_000


def ns(ms: float) -> int:
    return T0 + int(round(ms * MS))


def rec(request_id: int, step_id: str = "c2", **kw: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        run_id="run",
        cell_id="cell",
        step_id=step_id,
        request_id=request_id,
        worker=0,
        api="completions",
    )
    base.update(kw)
    return RequestRecord(**base)


def example_records() -> list[RequestRecord]:
    """docs/metrics.md, "worked example": A and B succeed, C fails, W is warm-up, X is another step."""
    a = rec(
        1,
        scheduled_ns=ns(0),
        sent_ns=ns(0),
        first_token_ns=ns(100),
        end_ns=ns(150),
        chunk_times_ns=[ns(100), ns(120), ns(150)],
        chunk_tokens=[1, 1, 3],
        prompt_tokens=10,
        output_tokens=5,
        client_output_tokens=5,
        token_source="usage",
        status=200,
    )
    b = rec(
        2,
        scheduled_ns=ns(10),
        sent_ns=ns(20),
        first_token_ns=ns(80),
        end_ns=ns(110),
        chunk_times_ns=[ns(80), ns(110)],
        chunk_tokens=[1, 1],
        prompt_tokens=10,
        output_tokens=2,
        client_output_tokens=3,
        token_source="usage",
        status=200,
    )
    c = rec(3, scheduled_ns=ns(30), sent_ns=ns(30), end_ns=ns(60), status=503, error_class="http_5xx")
    w = rec(
        0,
        scheduled_ns=ns(-100),
        sent_ns=ns(-100),
        first_token_ns=ns(-20),
        end_ns=ns(-10),
        chunk_times_ns=[ns(-20), ns(-10)],
        chunk_tokens=[1, 1],
        prompt_tokens=10,
        output_tokens=2,
        token_source="tokenizer",
        warmup=True,
        status=200,
    )
    x = rec(
        9,
        step_id="c4",
        scheduled_ns=ns(0),
        sent_ns=ns(0),
        first_token_ns=ns(5000),
        end_ns=ns(9000),
        chunk_times_ns=[ns(5000), ns(9000)],
        chunk_tokens=[1, 1],
        output_tokens=2,
        status=200,
    )
    return [a, b, c, w, x]


STEP = Step("c2", "concurrency", 2.0)


def test_per_request_frame_columns_and_values() -> None:
    frame = per_request_frame(records_frame(example_records()))
    assert tuple(frame.columns) == FRAME_COLUMNS
    by_id = frame.set_index("request_id")
    assert by_id.loc[1, "ttft_ms"] == pytest.approx(100.0)
    assert by_id.loc[1, "e2e_ms"] == pytest.approx(150.0)
    assert by_id.loc[1, "tpot_ms"] == pytest.approx(12.5)
    assert by_id.loc[2, "ttft_ms"] == pytest.approx(70.0)  # from scheduled (10), not sent (20)
    assert by_id.loc[2, "queue_ms"] == pytest.approx(10.0)
    assert by_id.loc[2, "tpot_ms"] == pytest.approx(30.0)
    assert not by_id.loc[3, "ok"] and by_id.loc[3, "error_class"] == "http_5xx"
    assert math.isnan(by_id.loc[3, "ttft_ms"]) and math.isnan(by_id.loc[3, "e2e_ms"])
    assert bool(by_id.loc[0, "warmup"]) is True


def test_itl_splits_multi_token_chunks_and_skips_first_gap() -> None:
    frame = records_frame(example_records())
    got = np.sort(itl_samples_ms(frame[frame["step_id"] == "c2"]))
    # A: gap 20 ms / 1 token, gap 30 ms / 3 tokens → 20, 10, 10, 10; B: 30. TTFT gaps excluded, W excluded.
    np.testing.assert_allclose(got, [10.0, 10.0, 10.0, 20.0, 30.0])


def test_itl_without_chunk_counts_and_with_empty_chunks() -> None:
    frame = records_frame(
        [
            rec(
                1,
                scheduled_ns=ns(0),
                sent_ns=ns(0),
                first_token_ns=ns(10),
                end_ns=ns(40),
                chunk_times_ns=[ns(10), ns(25), ns(40)],
                chunk_tokens=[],
            ),
            # a role-only first chunk (0 tokens) then tokens: the 0-token chunk is not a token arrival
            rec(
                2,
                scheduled_ns=ns(0),
                sent_ns=ns(0),
                first_token_ns=ns(20),
                end_ns=ns(50),
                chunk_times_ns=[ns(5), ns(20), ns(50)],
                chunk_tokens=[0, 1, 2],
            ),
        ]
    )
    np.testing.assert_allclose(np.sort(itl_samples_ms(frame)), [15.0, 15.0, 15.0, 15.0])


def test_step_metrics_worked_example() -> None:
    m = compute_step_metrics(records_frame(example_records()), step=STEP, slo=Slo())
    assert (m.step_id, m.kind, m.target) == ("c2", "concurrency", 2.0)
    assert (m.requests_total, m.requests_ok, m.requests_warmup) == (3, 2, 1)
    assert m.duration_s == pytest.approx(0.150)  # first scheduled (0) → last end (150 ms)

    assert m.ttft_ms is not None and m.e2e_ms is not None and m.tpot_ms is not None
    assert m.itl_ms is not None and m.queue_ms is not None
    assert (m.ttft_ms.count, m.ttft_ms.mean, m.ttft_ms.min, m.ttft_ms.max) == (
        2,
        pytest.approx(85.0),
        70.0,
        100.0,
    )
    assert (m.ttft_ms.p50, m.ttft_ms.p90, m.ttft_ms.p95, m.ttft_ms.p99) == pytest.approx(
        (85.0, 97.0, 98.5, 99.7)
    )
    assert (m.e2e_ms.mean, m.e2e_ms.p90, m.e2e_ms.p99) == pytest.approx((125.0, 145.0, 149.5))
    assert (m.tpot_ms.count, m.tpot_ms.mean, m.tpot_ms.p90) == (2, pytest.approx(21.25), pytest.approx(28.25))
    assert (m.itl_ms.count, m.itl_ms.mean, m.itl_ms.p50) == (5, pytest.approx(16.0), pytest.approx(10.0))
    assert (m.itl_ms.p90, m.itl_ms.p95, m.itl_ms.p99) == pytest.approx((26.0, 28.0, 29.6))
    assert (m.queue_ms.mean, m.queue_ms.max) == pytest.approx((5.0, 10.0))

    assert m.request_throughput == pytest.approx(2 / 0.150)
    assert m.output_tok_s == pytest.approx(7 / 0.150)
    assert m.total_tok_s == pytest.approx(27 / 0.150)
    assert m.error_rate == pytest.approx(1 / 3)
    assert set(m.errors) == set(ERROR_CLASSES)
    assert m.errors["http_5xx"] == 1 and sum(m.errors.values()) == 1
    assert m.token_agreement == pytest.approx(0.5)
    assert m.token_sources == {"usage": 2}
    assert m.chunks_per_token == pytest.approx(5 / 7)
    assert m.mean_in_flight == pytest.approx(270 / 150)  # (150 + 90 + 30) ms busy over 150 ms
    assert m.goodput_req_s is None and m.slo_attainment is None
    assert m.achieved_rate is None and m.arrival_cv is None  # closed loop


def test_goodput_with_slo() -> None:
    frame = records_frame(example_records())
    m = compute_step_metrics(frame, step=STEP, slo=Slo(ttft_p99_ms=90, tpot_p99_ms=50))
    # A fails TTFT (100 > 90), B passes both, C failed → 1 good of 3.
    assert m.goodput_req_s == pytest.approx(1 / 0.150)
    assert m.slo_attainment == pytest.approx(1 / 3)
    strict = compute_step_metrics(frame, step=STEP, slo=Slo(ttft_p99_ms=200, tpot_p99_ms=20))
    assert strict.slo_attainment == pytest.approx(1 / 3)  # B's TPOT 30 > 20, A's 12.5 passes
    e2e = compute_step_metrics(frame, step=STEP, slo=Slo(e2e_p99_ms=120))
    assert e2e.slo_attainment == pytest.approx(1 / 3)  # only B (100 ms)


def test_tpot_excludes_single_token_replies_and_goodput_treats_them_as_met() -> None:
    frame = records_frame(
        [
            rec(
                1,
                scheduled_ns=ns(0),
                sent_ns=ns(0),
                first_token_ns=ns(40),
                end_ns=ns(40),
                chunk_times_ns=[ns(40)],
                chunk_tokens=[1],
                output_tokens=1,
                token_source="usage",
            ),
            rec(
                2,
                scheduled_ns=ns(0),
                sent_ns=ns(0),
                first_token_ns=ns(50),
                end_ns=ns(80),
                chunk_times_ns=[ns(50), ns(60), ns(80)],
                chunk_tokens=[1, 1, 1],
                output_tokens=3,
            ),
        ]
    )
    m = compute_step_metrics(frame, step=STEP, slo=Slo(tpot_p99_ms=10))
    assert m.tpot_ms is not None and m.tpot_ms.count == 1 and m.tpot_ms.mean == pytest.approx(15.0)
    assert m.ttft_ms is not None and m.ttft_ms.count == 2
    assert m.slo_attainment == pytest.approx(0.5)  # the one-token reply is good, the other (15 > 10) is not


def test_arrival_rate_and_cv_of_known_schedule() -> None:
    rate, cv = arrival_stats(np.array([ns(0), ns(1000), ns(3000), ns(6000)]))
    assert rate == pytest.approx(0.5)  # 3 gaps over 6 s
    assert cv == pytest.approx(math.sqrt(2 / 3) / 2)  # gaps 1, 2, 3 s: std sqrt(2/3), mean 2
    _, constant = arrival_stats(np.array([ns(0), ns(500), ns(1000), ns(1500)]))
    assert constant == pytest.approx(0.0)
    assert arrival_stats(np.array([ns(0)])) == (None, None)


def test_open_loop_step_reports_arrivals() -> None:
    rows = [
        rec(
            i,
            step_id="r0.5",
            scheduled_ns=ns(t),
            sent_ns=ns(t),
            first_token_ns=ns(t + 10),
            end_ns=ns(t + 20),
            chunk_times_ns=[ns(t + 10), ns(t + 20)],
            chunk_tokens=[1, 1],
            output_tokens=2,
        )
        for i, t in enumerate([0, 1000, 3000, 6000])
    ]
    m = compute_step_metrics(records_frame(rows), step=Step("r0.5", "rate", 0.5), slo=Slo())
    assert m.achieved_rate == pytest.approx(0.5)
    assert m.arrival_cv == pytest.approx(math.sqrt(2 / 3) / 2)


def test_mean_in_flight_of_known_intervals() -> None:
    sent = np.array([0, 0, 50, 80])
    end = np.array([100, 50, 100, 200])
    # over [0, 100]: 100 + 50 + 50 + 20 (clipped to the window) = 220 → 2.2
    assert mean_in_flight(sent, end, (0, 100)) == pytest.approx(2.2)
    assert mean_in_flight(sent, end, (10, 10)) is None


def test_duration_override_is_the_throughput_denominator() -> None:
    m = compute_step_metrics(records_frame(example_records()), step=STEP, slo=Slo(), duration_s=2.0)
    assert m.duration_s == 2.0
    assert m.request_throughput == pytest.approx(1.0)


def test_no_records() -> None:
    empty = records_frame([])
    m = compute_step_metrics(empty, step=STEP, slo=Slo(ttft_p99_ms=1))
    assert (m.requests_total, m.requests_ok, m.request_throughput) == (0, 0, 0.0)
    assert m.ttft_ms is None and m.goodput_req_s is None
    assert per_request_frame(empty).empty
    assert itl_samples_ms(empty).size == 0


def test_all_failed() -> None:
    rows = [
        rec(i, scheduled_ns=ns(10 * i), sent_ns=ns(10 * i), end_ns=ns(10 * i + 5), error_class=cls)
        for i, cls in enumerate(["connect", "timeout", "timeout"])
    ]
    m = compute_step_metrics(records_frame(rows), step=STEP, slo=Slo(ttft_p99_ms=100))
    assert m.error_rate == 1.0 and m.requests_ok == 0
    assert m.errors["timeout"] == 2 and m.errors["connect"] == 1
    assert m.ttft_ms is None and m.itl_ms is None and m.chunks_per_token is None
    assert m.goodput_req_s == 0.0 and m.slo_attainment == 0.0


def test_missing_first_token_and_zero_tokens_do_not_crash() -> None:
    rows = [rec(1, scheduled_ns=ns(0), sent_ns=ns(0), end_ns=ns(30), output_tokens=0, token_source="usage")]
    m = compute_step_metrics(records_frame(rows), step=STEP, slo=Slo(ttft_p99_ms=100))
    assert m.requests_ok == 1 and m.ttft_ms is None and m.tpot_ms is None
    assert m.e2e_ms is not None and m.e2e_ms.mean == pytest.approx(30.0)
    assert m.slo_attainment == 0.0  # no first token: it cannot have met a TTFT limit


def test_health_maps_into_model() -> None:
    health = {"loop_lag_p99_ms": 12.5, "limited": True, "reasons": ["cpu"], "unrelated": 1}
    m = compute_step_metrics(records_frame(example_records()), step=STEP, slo=Slo(), health=health)
    assert m.harness.loop_lag_p99_ms == 12.5 and m.harness.limited
    # the load layer's reasons come first, then the records' own (these 3 records hold 2 users 66.7%)
    assert len(m.harness.reasons) == 2 and m.harness.reasons[0] == "cpu"
    assert m.harness.reasons[1].startswith("the 2 users held 66.7%")


def test_missing_required_column_names_it() -> None:
    with pytest.raises(ValueError, match="scheduled_ns"):
        per_request_frame(pd.DataFrame({"end_ns": [1]}))


def test_dist_is_exact_not_rounded() -> None:
    d = dist(np.array([3432.0, 3433.0]))
    assert d is not None and d.max == 3433.0 and d.p50 == pytest.approx(3432.5)
    assert dist(np.array([np.nan])) is None
