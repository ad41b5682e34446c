"""An already-running endpoint (``backend: external``) with an API key: benchmarked, and the key never leaks.

The simulator plays the remote endpoint (an OpenShift route, a colleague's
server). The key is read from the environment variable the scenario names; the
test then searches every file the run wrote for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from cli_runner import tokenbench

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-tokenbench-test-9f8e7d6c5b4a"


def test_external_endpoint_with_key_never_leaks(tmp_path: Path, sim_server) -> None:
    sim = sim_server(ttft_ms=10, itl_ms=2)
    scenario = {
        "name": "ext",
        "servers": [
            {
                "name": "remote",
                "backend": "external",
                "model": "sim-model",
                "base_url": sim.base_url + "/v1",
                "api_key_env": "TB_TEST_API_KEY",
            },
        ],
        "workload": {"prompt_tokens": 8, "output_tokens": 6, "steps": {"concurrency": [2]}, "requests": 8},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    proc = tokenbench("run", path, "--out", tmp_path / "out", extra_env={"TB_TEST_API_KEY": SECRET})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    run_dir = next((tmp_path / "out").glob("*-ext"))
    df = pq.read_table(run_dir / "records.parquet").to_pandas()
    assert len(df) == 8 and df["error_class"].isna().all() and (df["output_tokens"] == 6).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cells"][0]["status"] == "ok" and summary["cells"][0]["command"] == []
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 5
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_external_endpoint_missing_key_variable_fails_the_cell(tmp_path: Path, sim_server) -> None:
    sim = sim_server(ttft_ms=5, itl_ms=1)
    scenario = {
        "name": "ext2",
        "servers": [
            {
                "name": "remote",
                "backend": "external",
                "model": "m",
                "base_url": sim.base_url,
                "api_key_env": "TB_TEST_UNSET_KEY_VAR",
            }
        ],
        "workload": {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 2},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    env = {k: v for k, v in os.environ.items() if k != "TB_TEST_UNSET_KEY_VAR"}
    proc = tokenbench("run", path, "--out", tmp_path / "out", env=env)
    assert proc.returncode == 1
    assert "TB_TEST_UNSET_KEY_VAR" in proc.stdout
