"""GPU memory of servers not on this host: no local NVML for them, the cluster's Prometheus instead.

The Prometheus is ``tests/fake_prometheus.py`` (a double) and NVML is
``tests/fake_nvml.py`` (a double reporting two busy GPUs): together they show
that a server the harness did not launch never gets this host's GPUs, that
the range query asks for the right pod and time, and that each failure is a
status with a message, never an exception or a leaked token.
"""

from __future__ import annotations

import time

import pytest
from fake_nvml import FakeNvml
from fake_prometheus import FB_USED, GPU_UTIL, FakeGpu, FakePrometheus, parse_selector

from harness.telemetry.clock import ClockMap
from harness.telemetry.config import TelemetryConfig
from harness.telemetry.dcgm import (
    MAX_POINTS,
    RemoteGpuQuery,
    Window,
    query_spans,
    selector_for,
    step_at,
)
from harness.telemetry.gpu import GpuProbe
from harness.telemetry.sampler import TelemetrySampler
from harness.telemetry.summary import NOT_MEASURED_HERE, measurement_note, memory_summary

TOKEN = "prom-token-7c1e9a44d2b8f6"
MIB = 2**20
S = 1_000_000_000
# A fixed clock map: monotonic 0 is Unix time 1,700,000,000 s.
CLOCK = ClockMap(wall_minus_monotonic_ns=1_700_000_000 * S)


def _config(url: str, **fields: object) -> TelemetryConfig:
    base: dict[str, object] = {
        "prometheus_url": url,
        "namespace": "llm",
        "pod": "granite-.*",
        "margin_s": 2.0,
    }
    base.update(fields)
    return TelemetryConfig.model_validate(base)


def _gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            0, "granite-predictor-7d9f", "llm", used_mib=lambda t: 30_000.0 if t >= 1_700_000_010 else 1_000.0
        ),
        FakeGpu(1, "granite-predictor-7d9f", "llm", used_mib=lambda t: 10_000.0, util=50.0),
        FakeGpu(2, "other-model-1", "llm"),  # another pod's GPU: must not be counted
        FakeGpu(3, "granite-predictor-7d9f", "elsewhere"),  # same pod name, other namespace
    ]


def test_selector_handle_pod_takes_over_and_strings_are_escaped() -> None:
    cfg = TelemetryConfig(prometheus_url="http://p:9090", pod="granite-.*", namespace="llm")
    assert selector_for(cfg, None, None) == '{namespace="llm",pod=~"granite-.*"}'
    assert selector_for(cfg, "granite-abc", "serving") == '{namespace="serving",pod="granite-abc"}'
    odd = TelemetryConfig(prometheus_url="http://p", pod='a\\d+"x', pod_label="exported_pod")
    assert selector_for(odd, None, None) == '{exported_pod=~"a\\\\d+\\"x"}'
    assert parse_selector("M" + selector_for(odd, None, None))[1] == [("exported_pod", "=~", 'a\\d+"x')]
    assert selector_for(TelemetryConfig(prometheus_url="http://p"), None, None) is None


def test_query_spans_merge_margins_clamp_now_and_split() -> None:
    windows = [Window("c1", 10 * S, 20 * S), Window("c2", 21 * S, 30 * S), Window("c4", 100 * S, 110 * S)]
    assert query_spans(windows, 2.0, now_ns=111 * S, step_s=1.0) == [(8 * S, 32 * S), (98 * S, 111 * S)]
    # not before the cell's start: earlier values may be another cell's load
    assert query_spans(windows, 2.0, 111 * S, 1.0, not_before_ns=9 * S) == [
        (9 * S, 32 * S),
        (98 * S, 111 * S),
    ]
    long = [Window("c1", 0, 3 * MAX_POINTS * S)]
    spans = query_spans(long, 0.0, now_ns=10**15, step_s=1.0)
    assert len(spans) == 3 and all(end - start <= MAX_POINTS * S for start, end in spans)
    assert spans[0][0] == 0 and spans[-1][1] == 3 * MAX_POINTS * S
    assert step_at(15 * S, windows) == "c1" and step_at(20_500_000_000, windows) is None


def test_clock_map_round_trip_and_agrees_with_this_host() -> None:
    clock = ClockMap.read()
    assert clock.uncertainty_ns < 5_000_000
    now_wall = time.time_ns()
    assert abs(clock.to_monotonic_ns(now_wall / 1e9) - time.monotonic_ns()) < 50_000_000
    assert CLOCK.to_monotonic_ns(1_700_000_012.5) == 12_500_000_000
    assert CLOCK.to_wall_s(12_500_000_000) == pytest.approx(1_700_000_012.5)


def test_fetch_rows_on_the_records_axis_with_the_right_query() -> None:
    windows = [Window("c1", 5 * S, 15 * S)]
    with FakePrometheus(_gpus(), token=TOKEN) as prom:
        query = RemoteGpuQuery(_config(prom.url, prometheus_token_env="TB_PROM"), None, TOKEN)
        query.selector = selector_for(query.config, None, None)
        rows, status = query.fetch("cell-a", windows, CLOCK, now_ns=100 * S)
    assert status.status == "ok" and status.series == 2 and status.queries == 2
    assert status.wall_minus_monotonic_ns == CLOCK.wall_minus_monotonic_ns
    assert [q.query for q in prom.queries] == [
        FB_USED + '{namespace="llm",pod=~"granite-.*"}',
        GPU_UTIL + '{namespace="llm",pod=~"granite-.*"}',
    ]
    first = prom.queries[0]
    assert first.authorized and first.step == 1.0
    assert (first.start, first.end) == (1_700_000_003.0, 1_700_000_017.0)  # the step +- margin_s, wall clock
    used = [r for r in rows if r["name"] == "gpu_used_bytes"]
    assert {r["labels"].split(",")[0] for r in used} == {"Hostname=gpu-node-1"}
    assert {r["source"] for r in rows} == {"dcgm"} and {r["cell_id"] for r in rows} == {"cell-a"}
    assert len(used) == 2 * 15  # two GPUs, 3..17 s at 1 s
    assert min(r["t_ns"] for r in used) == 3 * S and max(r["t_ns"] for r in used) == 17 * S
    tagged = {r["t_ns"] for r in used if r["step_id"] == "c1"}
    assert tagged == {t * S for t in range(5, 16)}
    # GPU 0 steps from 1,000 to 30,000 MiB at Unix 1,700,000,010 = monotonic 10 s.
    gpu0 = {r["t_ns"]: r["value"] for r in used if "gpu=0" in r["labels"]}
    assert gpu0[9 * S] == 1_000 * MIB and gpu0[10 * S] == 30_000 * MIB
    mem = memory_summary(rows, ["c1"], measured_here=False, remote=status)
    assert mem.gpu_source == "dcgm" and mem.gpu_present and not mem.measured_here
    assert mem.peak_vram_mb == 40_000.0  # summed over the pod's two GPUs
    assert mem.steady_vram_mb == 40_000.0  # median of 5..15 s: 5 samples at 11,000, 6 at 40,000
    assert mem.peak_gpu_util_pct == pytest.approx(68.5) and mem.peak_rss_mb is None
    assert mem.remote_gpu == status


def test_duplicate_scrapes_of_one_gpu_count_once() -> None:
    with FakePrometheus(_gpus()[:1], duplicate=True) as prom:
        query = RemoteGpuQuery.for_server(_config(prom.url), None, None)
        assert query is not None
        rows, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert status.series == 1
    mem = memory_summary(rows, ["c1"], measured_here=False, remote=status)
    assert mem.peak_vram_mb == 1_000.0  # not 2,000: the second scrape of GPU 0 is the same GPU


def test_refused_token_is_a_status_and_never_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TB_PROM_TOKEN", "wrong-" + TOKEN)
    with FakePrometheus(_gpus(), token=TOKEN) as prom:
        query = RemoteGpuQuery.for_server(_config(prom.url, prometheus_token_env="TB_PROM_TOKEN"), None, None)
        assert query is not None
        rows, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert rows == [] and status.status == "auth_failed"
    assert len(prom.queries) == 1 and not prom.queries[0].authorized  # no retries with a refused token
    assert "HTTP 401" in (status.message or "") and "$TB_PROM_TOKEN" in (status.message or "")
    assert TOKEN not in status.model_dump_json()
    note = measurement_note(memory_summary(rows, ["c1"], measured_here=False, remote=status))
    assert note is not None and NOT_MEASURED_HERE in note and "auth_failed" in note


def test_no_token_sent_to_a_prometheus_that_wants_one() -> None:
    with FakePrometheus(_gpus(), token=TOKEN) as prom:
        query = RemoteGpuQuery.for_server(_config(prom.url), None, None)
        assert query is not None
        _, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert status.status == "auth_failed" and "no token was sent" in (status.message or "")


def test_unset_token_variable_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TB_UNSET_PROM_TOKEN", raising=False)
    with FakePrometheus(_gpus(), token=TOKEN) as prom:
        cfg = _config(prom.url, prometheus_token_env="TB_UNSET_PROM_TOKEN")
        query = RemoteGpuQuery.for_server(cfg, None, None)
        assert query is not None
        rows, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert rows == [] and status.status == "no_token" and prom.queries == []
    assert "TB_UNSET_PROM_TOKEN" in (status.message or "")


def test_no_series_names_the_selector() -> None:
    with FakePrometheus(_gpus()) as prom:
        query = RemoteGpuQuery.for_server(_config(prom.url, pod="llama-.*"), None, None)
        assert query is not None
        rows, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert rows == [] and status.status == "no_series" and status.series == 0
    assert '{namespace="llm",pod=~"llama-.*"}' in (status.message or "")
    mem = memory_summary(rows, ["c1"], measured_here=False, remote=status)
    assert mem.peak_vram_mb is None and mem.gpu_source is None and not mem.gpu_present


def test_exported_pod_labels_are_a_setting() -> None:
    with FakePrometheus(_gpus(), pod_label="exported_pod", namespace_label="exported_namespace") as prom:
        cfg = _config(prom.url, pod_label="exported_pod", namespace_label="exported_namespace")
        query = RemoteGpuQuery.for_server(cfg, None, None)
        assert query is not None
        _, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert status.status == "ok" and status.series == 2


def test_prometheus_down_and_error_answers() -> None:
    with FakePrometheus(_gpus()) as prom:
        url = prom.url
    query = RemoteGpuQuery.for_server(_config(url, timeout_s=2.0), None, None)
    assert query is not None
    _, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert status.status == "unreachable" and "ConnectError" in (status.message or "")
    with FakePrometheus(_gpus(), fail_status=503) as prom:
        cfg = _config(prom.url)
        query = RemoteGpuQuery(cfg, selector_for(cfg, None, None), TOKEN)
        _, status = query.fetch("c", [Window("c1", 5 * S, 6 * S)], CLOCK, now_ns=100 * S)
    assert status.status == "error" and "HTTP 503" in (status.message or "")
    assert TOKEN not in (status.message or "")  # the fake quotes the Authorization header back


def test_server_not_on_this_host_never_gets_local_gpus() -> None:
    """The fake NVML reports two busy GPUs; a non-local cell must not record them."""
    nvml = FakeNvml(grow=0.0)
    with FakePrometheus(_gpus()) as prom:
        cfg = _config(prom.url)
        sampler = TelemetrySampler(
            cell_id="ext",
            server_pid=None,
            metrics_url=None,
            interval_s=0.02,
            gpu=GpuProbe(nvml),
            local=False,
            remote=RemoteGpuQuery(cfg, selector_for(cfg, None, None)),
        )
        sampler.start()
        sampler.set_step("c1")
        time.sleep(0.1)
        sampler.set_step(None)
        rows = sampler.stop()
    assert {r["source"] for r in rows} == {"dcgm"}  # no gpu_present, no NVML rows, no process rows
    status = sampler.remote_status
    assert status is not None and status.status == "ok"
    assert (
        sampler.clock is not None and status.wall_minus_monotonic_ns == sampler.clock.wall_minus_monotonic_ns
    )
    mem = memory_summary(rows, ["c1"], measured_here=False, remote=status)
    assert mem.gpu_source == "dcgm" and mem.peak_vram_mb is not None and mem.peak_vram_mb < 80_000

    local_nvml = FakeNvml(grow=0.0)
    alone = TelemetrySampler(
        cell_id="ext",
        server_pid=None,
        metrics_url=None,
        interval_s=0.02,
        gpu=GpuProbe(local_nvml),
        local=False,
    )
    alone.start()
    time.sleep(0.06)
    rows = alone.stop()
    assert rows == [] and alone.remote_status is None
    mem = memory_summary(rows, [], measured_here=False)
    assert (
        not mem.measured_here and not mem.gpu_present and mem.peak_vram_mb is None and mem.gpu_source is None
    )
    note = measurement_note(mem)
    assert note is not None and NOT_MEASURED_HERE in note and "telemetry.prometheus_url" in note
    assert measurement_note(memory_summary(rows, [])) is None  # a server launched here needs no note
