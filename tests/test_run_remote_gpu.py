"""GPU memory of servers the harness did not start, through the real CLI.

Doubles: the harness process imports ``tests/nvml_double/pynvml.py`` (two
GPUs, 3 GiB in use) instead of the real pynvml, so a cell that sampled this
host's NVML is visible; the simulator plays the remote endpoint; the
cluster's Prometheus is ``tests/fake_prometheus.py``. Proves: an ``external``
cell records "not measured here" while a cell launched here records the
(fake) local GPUs; the pod's DCGM series land in summary.json, in
timeseries.parquet on the records' time axis and in the report's memory
figures; a refused token leaves the run going with a clear status; the token
is in no file of the run folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml
from fake_prometheus import FakeGpu, FakePrometheus

from cli_runner import tokenbench
from harness.report.data import load_run
from harness.report.memory import vram_series

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOKEN = "prom-e2e-token-4b7d1f9e2a6c"
NVML_PATH = os.pathsep.join([str(TESTS / "nvml_double"), str(TESTS), str(REPO)])
S = 1_000_000_000


def _run(
    tmp: Path, servers: list[dict], telemetry: dict | None, env: dict[str, str], steps: list[int]
) -> Path:
    data: dict = {
        "name": "remote-gpu",
        "seed": 1,
        "servers": servers,
        "workload": {"prompt_tokens": 8, "output_tokens": 6, "steps": {"concurrency": steps}, "requests": 6},
    }
    if telemetry is not None:
        data["telemetry"] = telemetry
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = tokenbench("run", path, "--out", tmp / "out", extra_env={"PYTHONPATH": NVML_PATH, **env})
    (tmp / "stdout.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return next((tmp / "out").glob("*-remote-gpu"))


def _external(url: str) -> dict:
    return {"name": "remote", "backend": "external", "model": "sim-model", "base_url": url + "/v1"}


def _cells(run_dir: Path) -> dict[str, dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {c["cell_id"]: c for c in summary["cells"]}


def _leaks(run_dir: Path, secret: str) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_external_cell_is_not_measured_here_while_a_local_cell_is(tmp_path: Path, sim_server) -> None:
    sim = sim_server(ttft_ms=5, itl_ms=1)
    local = {"name": "here", "backend": "sim", "model": "m", "settings": {"ttft_ms": 5, "itl_ms": 1}}
    run_dir = _run(tmp_path, [local, _external(sim.base_url)], None, {}, [1])
    cells = _cells(run_dir)
    here, remote = cells["here"]["memory"], cells["remote"]["memory"]
    assert here["measured_here"] and here["gpu_source"] == "nvml" and here["gpu_present"]
    assert here["peak_vram_mb"] == 3 * 1024.0  # the fake NVML's 2 + 1 GiB: this host's GPUs were sampled
    assert not remote["measured_here"] and not remote["gpu_present"] and remote["gpu_source"] is None
    assert remote["peak_vram_mb"] is None and remote["peak_rss_mb"] is None and remote["remote_gpu"] is None
    ts = pq.read_table(run_dir / "timeseries.parquet").to_pandas()
    assert set(ts[ts["cell_id"] == "here"]["source"]) >= {"gpu", "process"}
    assert set(ts[ts["cell_id"] == "remote"]["source"]) <= {"prometheus"}  # its own /metrics only
    out = (tmp_path / "stdout.txt").read_text()
    assert "remote: server not on this host: host RSS and GPU memory not measured here" in " ".join(
        out.split()
    )
    html = (run_dir / "report.html").read_text()
    assert "not measured here" in html


def test_pod_gpus_from_prometheus_on_the_records_axis(tmp_path: Path, sim_server) -> None:
    sim = sim_server(ttft_ms=20, itl_ms=5)
    gpus = [
        FakeGpu(0, "granite-predictor-00001-abc", "llm"),
        FakeGpu(1, "granite-predictor-00001-abc", "llm"),
    ]
    gpus.append(FakeGpu(2, "someone-else", "llm", used_mib=lambda t: 70_000.0))
    telemetry = {
        "prometheus_url": "PLACEHOLDER",
        "prometheus_token_env": "TB_E2E_PROM_TOKEN",
        "pod": "granite-predictor-.*",
        "namespace": "llm",
        "margin_s": 1,
    }
    with FakePrometheus(gpus, token=TOKEN) as prom:
        telemetry["prometheus_url"] = prom.url
        run_dir = _run(tmp_path, [_external(sim.base_url)], telemetry, {"TB_E2E_PROM_TOKEN": TOKEN}, [1, 2])
    offset_here = time.time_ns() - time.monotonic_ns()
    mem = _cells(run_dir)["remote"]["memory"]
    remote = mem["remote_gpu"]
    assert remote["status"] == "ok" and remote["series"] == 2 and remote["samples"] > 0
    assert remote["selector"] == '{namespace="llm",pod=~"granite-predictor-.*"}'
    assert not mem["measured_here"] and mem["gpu_source"] == "dcgm" and mem["gpu_present"]
    assert mem["peak_vram_mb"] == 2 * 20_480.0 and mem["steady_vram_mb"] == 2 * 20_480.0
    assert mem["peak_gpu_util_pct"] == 87.0
    # The run's wall/monotonic mapping is this host's (both processes share the clocks).
    assert abs(remote["wall_minus_monotonic_ns"] - offset_here) < 100_000_000

    # What was asked: the pod's selector, at 1 s, with the token, over the steps' time (wall clock).
    records = pq.read_table(run_dir / "records.parquet").to_pandas()
    wall = remote["wall_minus_monotonic_ns"]
    first_s, last_s = (records["scheduled_ns"].min() + wall) / S, (records["end_ns"].max() + wall) / S
    assert {q.query.split("{")[1] for q in prom.queries} == {'namespace="llm",pod=~"granite-predictor-.*"}'}
    assert all(q.authorized and q.step == 1.0 for q in prom.queries)
    assert min(q.start for q in prom.queries) <= first_s  # the first request is covered
    assert max(q.end for q in prom.queries) >= last_s

    # The rows: on the records' monotonic axis, tagged with the step whose records they span.
    ts = pq.read_table(run_dir / "timeseries.parquet").to_pandas()
    dcgm = ts[(ts["source"] == "dcgm") & (ts["name"] == "gpu_used_bytes")]
    assert set(dcgm["labels"].str.extract(r"gpu=(\d)")[0]) == {"0", "1"}  # not the other pod's GPU 2
    # Within the cell's telemetry (its /metrics scrapes start and stop with the sampler), +- margin_s.
    scrapes = ts[ts["source"] == "prometheus"]["t_ns"]
    assert dcgm["t_ns"].min() >= scrapes.min() - 1 * S - S // 2
    assert dcgm["t_ns"].max() <= scrapes.max() + 1 * S + S // 2  # never past the stop (now)
    for step_id, part in records.groupby("step_id"):
        tagged = dcgm[dcgm["step_id"] == step_id]["t_ns"]
        assert not tagged.empty, step_id
        assert tagged.min() <= part["scheduled_ns"].min() + 1 * S  # sampled at 1 s across the step
        assert tagged.max() >= part["end_ns"].max() - 1 * S

    # The report draws them on the same axis as the records and names their source.
    run = load_run(run_dir)
    vram = vram_series(run)
    rec_t0 = (records["scheduled_ns"].min() - min(records["scheduled_ns"].min(), ts["t_ns"].min())) / S
    assert set(vram["cell_id"]) == {"remote"} and vram["t_s"].min() <= rec_t0 + 0.01
    html = (run_dir / "report.html").read_text()
    assert "cluster Prometheus (DCGM)" in html and "DCGM_FI_DEV_FB_USED" in html

    out = (tmp_path / "stdout.txt").read_text()
    assert "GPU memory from the cluster" in " ".join(out.split()) and TOKEN not in out
    assert _leaks(run_dir, TOKEN) == []


def test_refused_token_the_run_goes_on_not_measured(tmp_path: Path, sim_server) -> None:
    sim = sim_server(ttft_ms=5, itl_ms=1)
    wrong = "wrong-" + TOKEN
    with FakePrometheus([FakeGpu(0, "granite-0", "llm")], token=TOKEN) as prom:
        telemetry = {
            "prometheus_url": prom.url,
            "prometheus_token_env": "TB_E2E_PROM_TOKEN",
            "namespace": "llm",
        }
        run_dir = _run(tmp_path, [_external(sim.base_url)], telemetry, {"TB_E2E_PROM_TOKEN": wrong}, [1])
    cell = _cells(run_dir)["remote"]
    assert cell["status"] == "ok" and len(cell["steps"]) == 1
    remote = cell["memory"]["remote_gpu"]
    assert remote["status"] == "auth_failed" and "HTTP 401" in remote["message"]
    assert cell["memory"]["peak_vram_mb"] is None and cell["memory"]["gpu_source"] is None
    out = " ".join((tmp_path / "stdout.txt").read_text().split())
    assert "not measured here; cluster Prometheus: auth_failed" in out
    assert "TB_E2E_PROM_TOKEN" in out and wrong not in out
    assert _leaks(run_dir, wrong) == []
    ts = pq.read_table(run_dir / "timeseries.parquet").to_pandas()
    assert pd.Series(ts["source"]).isin(["dcgm", "gpu", "process"]).sum() == 0
