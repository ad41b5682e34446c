"""memory_summary on hand-built rows: peak vs steady, steps, VRAM, KV cache."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.telemetry.summary import memory_summary

MIB = 2**20


def row(t: int, name: str, value: float, step: str | None, source: str = "process", labels: str = "") -> dict:
    return {
        "cell_id": "c",
        "step_id": step,
        "t_ns": t,
        "source": source,
        "name": name,
        "value": value,
        "labels": labels,
    }


def test_peak_and_steady_rss() -> None:
    rows = [
        row(0, "rss_bytes", 100 * MIB, None),
        row(1, "rss_bytes", 900 * MIB, None),  # a start-up spike outside any step
        row(2, "rss_bytes", 300 * MIB, "c1"),
        row(3, "rss_bytes", 500 * MIB, "c1"),
        row(4, "rss_bytes", 400 * MIB, "c2"),
        row(5, "rss_bytes", 800 * MIB, "warm"),  # not a measured step
        row(5, "cpu_percent", 5000.0, "c1"),
    ]
    mem = memory_summary(rows, ["c1", "c2"])
    assert mem.peak_rss_mb == pytest.approx(900.0)
    assert mem.steady_rss_mb == pytest.approx(400.0)  # median of 300, 500, 400
    assert mem.gpu_present is False and mem.peak_vram_mb is None and mem.kv_cache_usage_peak is None


def test_vram_is_summed_over_gpus_per_sample() -> None:
    rows = [
        row(0, "gpu_present", 1.0, None, "gpu"),
        row(1, "gpu_used_bytes", 1000 * MIB, "c1", "gpu", "gpu=0"),
        row(1, "gpu_used_bytes", 500 * MIB, "c1", "gpu", "gpu=1"),
        row(2, "gpu_used_bytes", 1200 * MIB, "c1", "gpu", "gpu=0"),
        row(2, "gpu_used_bytes", 600 * MIB, "c1", "gpu", "gpu=1"),
        row(3, "gpu_used_bytes", 2000 * MIB, None, "gpu", "gpu=0"),
    ]
    mem = memory_summary(pd.DataFrame(rows), ["c1"])
    assert mem.gpu_present is True
    assert mem.peak_vram_mb == pytest.approx(2000.0)
    assert mem.steady_vram_mb == pytest.approx(1650.0)  # median of 1500 and 1800


def test_kv_cache_peak_over_old_and_new_names() -> None:
    rows = [
        row(0, "vllm:kv_cache_usage_perc", 0.25, "c1", "prometheus", "engine=0"),
        row(1, "vllm:gpu_cache_usage_perc", 0.5, "c1", "prometheus"),
        row(2, "vllm:num_requests_running", 7.0, "c1", "prometheus"),
    ]
    assert memory_summary(rows, ["c1"]).kv_cache_usage_peak == pytest.approx(0.5)


def test_no_rows_and_no_measured_samples() -> None:
    empty = memory_summary([], ["c1"])
    assert empty.peak_rss_mb is None and empty.steady_rss_mb is None and empty.gpu_present is False
    only_idle = memory_summary([row(0, "rss_bytes", 10 * MIB, None)], ["c1"])
    assert only_idle.peak_rss_mb == pytest.approx(10.0) and only_idle.steady_rss_mb is None


def test_bad_rows_name_the_missing_field() -> None:
    with pytest.raises(ValueError, match="value"):
        memory_summary([{"t_ns": 0, "source": "process", "name": "rss_bytes"}], [])


def test_peak_rss_by_role_for_a_server_of_several_trees() -> None:
    rows = [
        row(0, "rss_bytes", 100 * MIB, "c1", labels="role=tgis"),
        row(0, "rss_bytes", 50 * MIB, "c1", labels="role=caikit"),
        row(1, "rss_bytes", 300 * MIB, "c1", labels="role=tgis"),
        row(1, "rss_bytes", 40 * MIB, "c1", labels="role=caikit"),
    ]
    mem = memory_summary(rows, ["c1"])
    assert mem.peak_rss_mb == pytest.approx(340.0)  # the trees are summed per sample time
    assert mem.peak_rss_by_role_mb == pytest.approx({"tgis": 300.0, "caikit": 50.0})
    single = memory_summary([row(0, "rss_bytes", 100 * MIB, "c1", labels="role=server")], ["c1"])
    assert single.peak_rss_by_role_mb == {} and single.peak_rss_mb == pytest.approx(100.0)
