"""Whole runs of ``backend: tgi`` through its test doubles (``tests/doubles``), as a user runs them.

The doubles are not TGI (servers/README.md, "The TGI double", says what they prove): the fake
launcher takes TGI 3.3.7's flags and serves TGI's API from the simulator; the fake podman/docker
runs that launcher as a "container" that, like a real one, survives its client unless stopped.
What is checked here is the harness: command lines, readiness, records, both protocols, the
output-length flag, and that no process or container outlives a run, a Ctrl-C or a SIGKILL.
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
import yaml

from leftovers import new_marker, processes_with_marker

REPO = Path(__file__).resolve().parents[1]
DOUBLES = REPO / "tests" / "doubles"


def write_scenario(tmp: Path, servers: list[dict], **workload: object) -> Path:
    data = {
        "name": "tgi-e2e",
        "seed": 3,
        "servers": servers,
        "workload": {
            "api": "tgi",
            "prompt_tokens": 8,
            "output_tokens": 12,
            "steps": {"concurrency": [2]},
            "requests": 16,
            "timeout_s": 20,
            **workload,
        },
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(path: Path, tmp: Path, marker: tuple[str, str], **env: str) -> subprocess.Popen[str]:
    full = {
        **os.environ,
        marker[0]: marker[1],
        "PYTHONPATH": str(REPO),
        "TOKENBENCH_FAKE_PYTHON": sys.executable,
        "TOKENBENCH_FAKE_CONTAINERS": str(tmp / "containers"),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(tmp / "reports")],
        cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_gone(marker: str, timeout: float = 15.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def containers(tmp: Path) -> list[str]:
    state = tmp / "containers"
    return sorted(p.stem for p in state.glob("*.json")) if state.exists() else []


def run_dir(tmp: Path) -> Path:
    return next((tmp / "reports").glob("*-tgi-e2e"))


def test_launcher_over_tgi_and_chat_records_info_and_flags_short_outputs(tmp_path: Path) -> None:
    servers = [
        {
            "name": "tgi",
            "backend": "tgi",
            "model": "mistralai/Mistral-7B-Instruct-v0.3",
            "api": ["tgi", "chat"],
            "startup_timeout_s": 60,
            "settings": {
                "launcher": str(DOUBLES / "text-generation-launcher"),
                "max_concurrent_requests": 16,
                "max_total_tokens": 256,
                "max_batch_size": 8,
            },
        },
        # vLLM-like references: they honour ignore_eos, so they always produce the requested 12 tokens.
        {
            "name": "ref",
            "backend": "sim",
            "model": "m",
            "api": "chat",
            "settings": {"ttft_ms": 5, "itl_ms": [2, 3]},
        },
    ]
    marker = new_marker()
    proc = start(write_scenario(tmp_path, servers), tmp_path, marker)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    rd = run_dir(tmp_path)
    summary = json.loads((rd / "summary.json").read_text())
    cells = {c["cell_id"]: c for c in summary["cells"]}
    assert set(cells) == {"tgi__api-tgi", "tgi__api-chat", "ref__itl_ms-2", "ref__itl_ms-3"}
    tgi, chat, ref = cells["tgi__api-tgi"], cells["tgi__api-chat"], cells["ref__itl_ms-2"]
    assert tgi["version"] == "text-generation-inference 3.3.7"
    assert tgi["server_info"]["model_id"] == "mistralai/Mistral-7B-Instruct-v0.3"
    assert (
        tgi["server_info"]["max_concurrent_requests"] == "16" and tgi["server_info"]["launch"] == "launcher"
    )
    assert tgi["command"][0].endswith("text-generation-launcher")
    assert tgi["command"][tgi["command"].index("--max-batch-size") + 1] == "8"
    assert (tgi["concurrency_cap"], tgi["concurrency_cap_setting"]) == (16, "max_concurrent_requests")
    assert chat["server_shared_with"] == "tgi__api-tgi" and chat["protocol"] == "chat"
    launch = json.loads((rd / "cells" / "tgi__api-tgi" / "launch.json").read_text())
    assert launch["mode"] == "launcher" and launch["info"]["version"] == "3.3.7"
    assert "fake text-generation-launcher 3.3.7" in (rd / "cells" / "tgi__api-tgi" / "server.log").read_text()
    records = pq.read_table(rd / "records.parquet").to_pandas()
    for cell_id in ("tgi__api-tgi", "tgi__api-chat"):
        mine = records[records["cell_id"] == cell_id]
        assert len(mine) == 16 and mine["error_class"].isna().all()
        assert (mine["requested_output_tokens"] == 12).all()
        assert (mine["output_tokens"] <= 12).all() and mine["output_tokens"].mean() < 12  # no ignore_eos
    # Achieved lengths are reported for every cell, and the cells more than 5 % apart are flagged.
    for cell in (tgi, chat, ref):
        (step,) = cell["steps"]
        assert step["requested_output_tokens_mean"] == 12
        assert cell["output_tokens_mean"] == step["output_tokens_mean"]
    assert ref["output_tokens_mean"] == 12
    assert tgi["output_tokens_mean"] < 9 and chat["output_tokens_mean"] < 9
    # four cells, two short and two full: the median sits between them, so all four are flagged
    assert "below the median of all cells' means" in tgi["output_length_flag"]
    assert "below the median" in chat["output_length_flag"]
    assert "above the median of all cells' means" in ref["output_length_flag"]
    assert "output length:" in out and "tgi__api-tgi" in out
    html = (rd / "report.html").read_text()
    assert 'id="output_length_banner"' in html and "tokens/request (requested 12.0)" in html
    assert wait_gone(marker[1]) == []


def test_podman_and_docker_containers_are_mapped_and_removed(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny-model"
    model.mkdir(parents=True)
    (tmp_path / "hf").mkdir()
    base = {"backend": "tgi", "model": str(model), "startup_timeout_s": 60, "env": {"LOG_LEVEL": "info"}}
    servers = [
        {
            **base,
            "name": "pod",
            "settings": {"container": str(DOUBLES / "podman"), "hf_cache": str(tmp_path / "hf")},
        },
        {**base, "name": "dock", "settings": {"container": str(DOUBLES / "docker"), "gpus": "0"}},
    ]
    marker = new_marker()
    proc = start(
        write_scenario(tmp_path, servers, requests=6), tmp_path, marker,
        HF_TOKEN="hf_do_not_record", HF_HOME=str(tmp_path / "hf-home"),
    )  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    rd = run_dir(tmp_path)
    summary = json.loads((rd / "summary.json").read_text())
    pod, dock = summary["cells"]
    for cell, gpu in ((pod, ["--device", "nvidia.com/gpu=all"]), (dock, ["--gpus", "device=0"])):
        cmd = cell["command"]
        assert cmd[1:3] == ["run", "--rm"] and cell["status"] == "ok"
        at = cmd.index(gpu[0])
        assert cmd[at : at + 2] == gpu
        assert f"{model}:/models/tiny-model:ro" in cmd
        assert cmd[cmd.index("--model-id") + 1] == "/models/tiny-model"
        assert ["-e", "HF_TOKEN"] == cmd[cmd.index("HF_TOKEN") - 1 : cmd.index("HF_TOKEN") + 1]
        assert cell["server_info"]["launch"] in ("podman", "docker")
    assert f"{tmp_path / 'hf'}:/data" in pod["command"]
    assert f"{tmp_path / 'hf-home'}:/data" in dock["command"]  # the default: $HF_HOME, created
    assert "hf_do_not_record" not in (rd / "summary.json").read_text()
    log = (rd / "cells" / "pod" / "server.log").read_text()
    assert "fake podman: container tokenbench-tgi-pod-" in log and "stop --time 30" in log
    assert containers(tmp_path) == []
    assert wait_gone(marker[1]) == []


def _wait_for_step(tmp: Path, proc: subprocess.Popen[str]) -> None:
    """Until the cell's server is up and its first step is under way (a container exists)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        runs = list((tmp / "reports").glob("*-tgi-e2e"))
        if runs and containers(tmp) and list((runs[0] / "cells").rglob("prompts.jsonl")):
            return
        time.sleep(0.2)
    raise AssertionError("the TGI cell never started its first step")


def _container_scenario(tmp: Path) -> Path:
    servers = [
        {
            "name": "pod",
            "backend": "tgi",
            "model": "org/m",
            "startup_timeout_s": 60,
            "settings": {"container": str(DOUBLES / "podman"), "hf_cache": str(tmp)},
        }
    ]
    return write_scenario(tmp, servers, requests=None, duration_s=30, steps={"concurrency": [1, 2]})


def test_ctrl_c_during_a_container_cell_stops_and_removes_the_container(tmp_path: Path) -> None:
    marker = new_marker()
    proc = start(_container_scenario(tmp_path), tmp_path, marker)
    _wait_for_step(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert containers(tmp_path) == []
    assert wait_gone(marker[1]) == []
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["interrupted"] and summary["cells"][0]["status"] == "interrupted"


def test_a_sigkilled_harness_leaves_no_container(tmp_path: Path) -> None:
    """No ``stop`` runs: the supervisor SIGTERMs the client, which forwards it to the container."""
    marker = new_marker()
    proc = start(_container_scenario(tmp_path), tmp_path, marker)
    _wait_for_step(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert wait_gone(marker[1], timeout=30) == []
    assert containers(tmp_path) == []
