"""How much of a closed-loop step's concurrency the client held (harness/heldload.py), from records alone."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.heldload import HELD_LIMIT, held_fraction, with_held
from harness.matrix import Step
from harness.metrics import compute_step_metrics, records_frame
from harness.records import RequestRecord
from harness.scenario import Slo

MS = 1_000_000


def _closed_loop(
    users: int, cycles: int, serve_ms: float, gap_ms: float, stagger_ms: float = 0.1, warm: int = 0
) -> list[RequestRecord]:
    """Each user sends its next request ``gap_ms`` after its previous response ended; ``warm`` cycles warm up."""
    recs = []
    for u in range(users):
        t = 1_000 * MS + int(u * stagger_ms * MS)  # users a little apart, as after the prewarm barrier
        for c in range(cycles):
            end = t + int(serve_ms * MS)
            recs.append(
                RequestRecord(
                    run_id="r",
                    cell_id="c",
                    step_id="c",
                    request_id=u * 1000 + c,
                    worker=0,
                    api="completions",
                    scheduled_ns=t,
                    sent_ns=t,
                    end_ns=end,
                    first_token_ns=t + MS,
                    chunk_times_ns=[t + MS],
                    chunk_tokens=[1],
                    output_tokens=1,
                    warmup=c < warm,
                )
            )
            t = end + int(gap_ms * MS)
    return recs


def test_a_closed_loop_that_sends_at_once_holds_every_user() -> None:
    recs = _closed_loop(users=8, cycles=20, serve_ms=100, gap_ms=0)
    m = compute_step_metrics(records_frame(recs), step=Step("c", "concurrency", 8.0), slo=Slo())
    assert m.harness.held_fraction == pytest.approx(1.0, abs=0.01)
    assert not any("users held" in r for r in m.harness.reasons)


def test_a_client_that_is_late_to_send_is_a_reason_with_its_share() -> None:
    """A 10 ms gap after each 90 ms response: 90 % held, and the report says so (not the limited flag)."""
    recs = _closed_loop(users=8, cycles=20, serve_ms=90, gap_ms=10)
    m = compute_step_metrics(records_frame(recs), step=Step("c", "concurrency", 8.0), slo=Slo())
    assert m.harness.held_fraction == pytest.approx(0.9, abs=0.01)
    (reason,) = [r for r in m.harness.reasons if "users held" in r]
    assert reason.startswith("the 8 users held 90.") and "less load than asked" in reason
    assert not m.harness.limited


def test_warm_up_requests_still_open_when_the_window_starts_count() -> None:
    """The window starts at the first measured send; the other users' warm-up requests are open then."""
    recs = _closed_loop(users=8, cycles=10, serve_ms=100, gap_ms=0, stagger_ms=10, warm=1)
    frame = records_frame(recs)
    m = compute_step_metrics(frame, step=Step("c", "concurrency", 8.0), slo=Slo())
    assert m.harness.held_fraction == pytest.approx(1.0, abs=0.01)
    measured_only = held_fraction(frame[~frame["warmup"]], 8.0)
    assert measured_only is not None and measured_only < 0.97  # what leaving them out would say


def test_the_tail_after_the_last_send_does_not_count() -> None:
    """Users finishing one by one after issuing stopped lower nothing: the window ends at the last send."""
    recs = _closed_loop(users=4, cycles=10, serve_ms=100, gap_ms=0)
    last = max(r.sent_ns for r in recs)
    for r in recs:
        if r.sent_ns == last:
            r.end_ns = last + 10_000 * MS  # a very long last response
    assert held_fraction(records_frame(recs), 4.0) == pytest.approx(1.0, abs=0.02)


def test_open_loop_and_unmeasurable_steps_get_no_figure() -> None:
    recs = _closed_loop(users=2, cycles=5, serve_ms=50, gap_ms=50)
    frame = records_frame(recs)
    assert "held_fraction" not in with_held({}, frame, "rate", 2.0)
    assert held_fraction(frame.iloc[:1], 2.0) is None  # one request: no window
    assert held_fraction(frame, 0.0) is None
    assert held_fraction(pd.DataFrame({"end_ns": [1, 2]}), 2.0) is None  # no send stamps


def test_the_limit_is_where_the_reason_starts() -> None:
    frame = records_frame(_closed_loop(users=1, cycles=50, serve_ms=100, gap_ms=0))
    full = held_fraction(frame, 1.0)
    assert full is not None
    just_under = full / (HELD_LIMIT - 0.001)  # a target that makes the same records just under the limit
    assert any("users held" in r for r in with_held({}, frame, "concurrency", just_under)["reasons"])
    just_over = full / (HELD_LIMIT + 0.001)
    assert "reasons" not in with_held({}, frame, "concurrency", just_over)
