"""``api: [a, b]``: one server launch measured over each protocol in turn (the same engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cli_runner import tokenbench
from harness.matrix import expand_cells
from harness.scenario import ScenarioError, parse_scenario


def _scenario(api: object, **server: object) -> dict:
    return {
        "name": "shared",
        "servers": [
            {"name": "eng", "backend": "sim", "model": "m", "api": api, **server},
        ],
        "workload": {
            "prompt_tokens": 8,
            "output_tokens": 6,
            "steps": {"concurrency": [2]},
            "requests": 6,
            "timeout_s": 10,
        },
    }


def test_a_protocol_list_expands_to_adjacent_cells_sharing_a_launch() -> None:
    data = _scenario(["completions", "tgis"], settings={"ttft_ms": [5, 10]})
    cells = expand_cells(parse_scenario(data))
    assert [c.cell_id for c in cells] == [
        "eng__ttft_ms-5__api-completions",
        "eng__ttft_ms-5__api-tgis",
        "eng__ttft_ms-10__api-completions",
        "eng__ttft_ms-10__api-tgis",
    ]
    assert [c.launch_key for c in cells] == ["eng__ttft_ms-5"] * 2 + ["eng__ttft_ms-10"] * 2
    alone = expand_cells(parse_scenario(_scenario("tgis", settings={"ttft_ms": 5})))[0]
    assert alone.launch_key == "" and alone.identity == cells[1].identity  # same config, same identity


def test_bad_protocol_lists_fail_at_validate() -> None:
    with pytest.raises(ScenarioError, match="without repeats"):
        parse_scenario(_scenario(["tgis", "tgis"]))
    with pytest.raises(ScenarioError, match="does not serve api 'caikit-grpc'"):
        parse_scenario({**_scenario(["completions", "caikit-grpc"]), "servers": [
            {"name": "v", "backend": "vllm", "model": "m", "api": ["completions", "caikit-grpc"]}
        ]})  # fmt: skip


def test_one_launch_serves_both_protocols(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_scenario(["completions", "tgis"], settings={"ttft_ms": 5, "itl_ms": 2})))
    out = tokenbench("run", path, "--out", tmp_path / "r", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = next((tmp_path / "r").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    first, second = summary["cells"]
    assert [first["status"], second["status"]] == ["ok", "ok"]
    assert first["server_shared_with"] is None and second["server_shared_with"] == first["cell_id"]
    assert first["command"] == second["command"] and first["launch_s"] == second["launch_s"]
    assert out.stdout.count("starting sim server") == 1
    assert (run_dir / "cells" / first["cell_id"] / "server.log").exists()
    assert not (run_dir / "cells" / second["cell_id"] / "server.log").exists()
    records = pq.read_table(run_dir / "records.parquet").to_pandas()
    assert records.groupby("cell_id")["api"].unique().map(list).to_dict() == {
        first["cell_id"]: ["completions"],
        second["cell_id"]: ["tgis"],
    }
    assert records["error_class"].isna().all()
