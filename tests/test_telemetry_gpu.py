"""GPU probe: the real no-GPU path on this machine, and the NVML path through a double.

The NVML double exists because there is no GPU here; it implements only the
pynvml calls the probe makes, with the same names and return shapes.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
from fake_nvml import GIB, FakeNvml

from harness.telemetry.gpu import GpuProbe
from harness.telemetry.sampler import TelemetrySampler
from harness.telemetry.summary import memory_summary


def test_no_gpu_here_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    probe = GpuProbe()
    if probe.present:
        pytest.skip("this machine has a GPU; the no-GPU path is covered on CPU-only machines")
    assert probe.sample([1, 2]) == [] and probe.sample() == []
    probe.close()
    assert caplog.records == []


def test_no_gpu_sampler_records_the_fact_once() -> None:
    probe = GpuProbe(FakeNvml(fail_count=True))
    assert not probe.present
    sampler = TelemetrySampler(cell_id="c", server_pid=None, metrics_url=None, interval_s=0.02, gpu=probe)
    sampler.start()
    time.sleep(0.1)
    rows = sampler.stop()
    assert [(r["name"], r["value"]) for r in rows] == [("gpu_present", 0.0)]
    mem = memory_summary(rows, [])
    assert mem.gpu_present is False and mem.peak_vram_mb is None


def test_fake_nvml_rows_per_gpu_and_per_process() -> None:
    nvml = FakeNvml(
        procs={
            0: [
                SimpleNamespace(pid=10, usedGpuMemory=3 * GIB),
                SimpleNamespace(pid=99, usedGpuMemory=5 * GIB),
                SimpleNamespace(pid=11, usedGpuMemory=None),
            ]
        }
    )
    probe = GpuProbe(nvml)
    assert probe.present
    got = {(s.name, s.labels): s.value for s in probe.sample([10, 11])}
    assert got == {
        ("gpu_used_bytes", "gpu=0"): 2.0 * GIB,
        ("gpu_total_bytes", "gpu=0"): 80.0 * GIB,
        ("gpu_util", "gpu=0"): 50.0,
        ("gpu_proc_used_bytes", "gpu=0"): 3.0 * GIB,  # pid 99 is not the server's
        ("gpu_used_bytes", "gpu=1"): 1.0 * GIB,
        ("gpu_total_bytes", "gpu=1"): 80.0 * GIB,
        ("gpu_util", "gpu=1"): 51.0,
    }
    probe.close()
    assert nvml.shutdown_calls == 1


def test_fake_nvml_through_sampler_and_summary() -> None:
    nvml = FakeNvml()
    sampler = TelemetrySampler(
        cell_id="c", server_pid=None, metrics_url=None, interval_s=0.02, gpu=GpuProbe(nvml)
    )
    sampler.start()
    sampler.set_step("c1")
    time.sleep(0.15)
    sampler.set_step(None)
    rows = sampler.stop()
    used = [r for r in rows if r["name"] == "gpu_used_bytes"]
    assert {r["labels"] for r in used} == {"gpu=0", "gpu=1"}
    mem = memory_summary(rows, ["c1"])
    assert mem.gpu_present is True
    # summed over both GPUs per sample time; GPU 0 grows 1 GiB per sample
    peak = max(r["value"] for r in used if r["labels"] == "gpu=0") + 1.0 * GIB
    assert mem.peak_vram_mb == pytest.approx(peak / 2**20)
    assert mem.steady_vram_mb is not None and mem.steady_vram_mb <= mem.peak_vram_mb
