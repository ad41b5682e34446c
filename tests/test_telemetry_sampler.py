"""TelemetrySampler against a real process tree that allocates memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.telemetry.process_mem import ProcessTreeProbe
from harness.telemetry.sampler import TelemetrySampler, read_timeseries, write_timeseries
from harness.telemetry.summary import memory_summary

MIB = 2**20

# The parent only waits; its child (a grandchild of the test) allocates 200 MiB after 0.5 s,
# so the RSS rise is only visible if the whole tree is sampled.
TREE = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time; time.sleep(0.5); x = b'x' * (200 * 2**20); print('allocated', flush=True); time.sleep(30)"])
child.wait()
"""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    try:
        yield proc
    finally:
        _kill_group(proc)


def test_sampler_sees_tree_rss_rise_and_tags_steps(tree: subprocess.Popen[bytes], tmp_path: Path) -> None:
    sampler = TelemetrySampler(cell_id="cell-a", server_pid=tree.pid, metrics_url=None)
    sampler.start()
    try:
        time.sleep(0.3)
        step_start = time.monotonic_ns()
        sampler.set_step("c1")
        time.sleep(1.5)
        sampler.set_step(None)
        step_end = time.monotonic_ns()
        time.sleep(0.3)
    finally:
        rows = sampler.stop()

    rss = [r for r in rows if r["source"] == "process" and r["name"] == "rss_bytes"]
    assert all(r["cell_id"] == "cell-a" for r in rows)
    values = [r["value"] for r in rss]
    assert max(values) - values[0] > 150 * MIB, "the grandchild's 200 MiB must show in the tree's RSS"

    times = [r["t_ns"] for r in rss]
    assert times == sorted(times)
    first_second = [t for t in times if times[0] <= t < times[0] + 1_000_000_000]
    assert len(first_second) >= 4, f"expected >= 4 samples/s, got {len(first_second)}"

    tagged = [r for r in rss if r["step_id"] == "c1"]
    untagged = [r for r in rss if r["step_id"] is None]
    assert tagged and untagged
    assert all(step_start <= r["t_ns"] <= step_end for r in tagged)
    assert all(not (step_start < r["t_ns"] < step_end - 300_000_000) for r in untagged)

    gpu_flag = [r for r in rows if r["source"] == "gpu" and r["name"] == "gpu_present"]
    assert len(gpu_flag) == 1  # recorded once, whatever the machine

    path = tmp_path / "timeseries.parquet"
    write_timeseries(path, rows)
    assert read_timeseries(path) == rows
    mem = memory_summary(read_timeseries(path), ["c1"])
    assert mem.peak_rss_mb is not None and mem.peak_rss_mb > 200
    assert mem.steady_rss_mb is not None and mem.steady_rss_mb <= mem.peak_rss_mb


def test_probe_tolerates_vanished_root() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    probe = ProcessTreeProbe(proc.pid)
    assert probe.sample() == []


def test_probe_survives_children_exiting() -> None:
    # the parent outlives its child here, so the tree shrinks from 2 processes to 1
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while not root.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = ProcessTreeProbe(proc.pid, uss_every=1)
        first = {s.name: s.value for s in probe.sample()}
        assert first["num_processes"] == 2 and first["rss_bytes"] > 0 and "uss_bytes" in first
        for child in root.children():
            child.kill()  # unreaped by its sleeping parent, it stays a zombie: listed, but holds nothing
        deadline = time.monotonic() + 5
        while (
            any(c.status() != psutil.STATUS_ZOMBIE for c in root.children()) and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        later = {s.name: s.value for s in probe.sample()}
        assert later["num_processes"] == 1 and later["rss_bytes"] < first["rss_bytes"]
    finally:
        _kill_group(proc)


def test_sampler_without_targets_stops_cleanly() -> None:
    sampler = TelemetrySampler(cell_id="ext", server_pid=None, metrics_url=None, interval_s=0.05)
    with sampler:
        time.sleep(0.1)
    rows = sampler.stop()  # a second stop is harmless
    assert [r["name"] for r in rows] == ["gpu_present"]


def test_bad_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="intervals"):
        TelemetrySampler(cell_id="x", server_pid=None, metrics_url=None, interval_s=0)


def test_read_timeseries_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "timeseries.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match="timeseries.parquet"):
        read_timeseries(bad)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_timeseries(tmp_path / "missing.parquet")


def test_sampler_samples_each_process_tree_with_its_role(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    a = subprocess.Popen(sleeper, start_new_session=True)
    b = subprocess.Popen(sleeper, start_new_session=True)
    try:
        sampler = TelemetrySampler(
            cell_id="c", server_pid=a.pid, processes={"tgis": a.pid, "caikit": b.pid}, metrics_url=None,
            interval_s=0.05,
        )  # fmt: skip
        sampler.start()
        time.sleep(0.4)
        rows = sampler.stop()
    finally:
        for proc in (a, b):
            _kill_group(proc)
    rss = [r for r in rows if r["source"] == "process" and r["name"] == "rss_bytes"]
    assert {r["labels"] for r in rss} == {"role=tgis", "role=caikit"}
    by_time: dict[int, set[str]] = {}
    for r in rss:
        by_time.setdefault(r["t_ns"], set()).add(r["labels"])
    assert all(len(labels) == 2 for labels in by_time.values()), "both trees share each sample's stamp"
    single = TelemetrySampler(cell_id="c", server_pid=123, metrics_url=None)
    assert single.processes == {"server": 123}
