"""A server that dies mid-step fails its cell at once, keeps the records so far, and the run goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from cli_runner import tokenbench


def test_server_death_mid_step_fails_the_cell_and_skips_its_other_steps(tmp_path: Path) -> None:
    scenario = {
        "name": "death",
        "servers": [
            {
                "name": "dies",
                "backend": "sim",
                "model": "m",
                "settings": {"ttft_ms": 5, "itl_ms": 5, "fault": "exit_after:6"},
            },
            {"name": "lives", "backend": "sim", "model": "m", "settings": {"ttft_ms": 5, "itl_ms": 2}},
        ],
        "workload": {
            "prompt_tokens": 8,
            "output_tokens": 8,
            "steps": {"concurrency": [2, 4]},
            "duration_s": 8,
            "timeout_s": 10,
        },
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    started = time.monotonic()
    out = tokenbench("run", path, "--out", tmp_path / "r", timeout=300)
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    run_dir = next((tmp_path / "r").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    dies, lives = summary["cells"]
    assert dies["status"] == "failed" and "died during step c2" in dies["error"], dies["error"]
    assert dies["steps"] == []  # c2 was cut short, c4 never ran against the dead port
    assert dies["log_tail"]
    assert lives["status"] == "ok" and [s["step_id"] for s in lives["steps"]] == ["c2", "c4"]
    records = pq.read_table(run_dir / "cells" / "dies" / "steps" / "c2" / "records.parquet").to_pandas()
    assert (records["error_class"].isna()).sum() >= 4  # the requests served before the crash are kept
    assert not (run_dir / "cells" / "dies" / "steps" / "c4").exists()
    assert took < 120  # dies' c2 did not run its full window against a dead server, nor did c4
