"""The command line: exit codes and messages for validate/run/report, exercised as a user would."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from cli_runner import tokenbench

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return tokenbench(*args, extra_env={"COLUMNS": "200"}, timeout=300)


def sim_scenario(tmp: Path) -> Path:
    data = {
        "name": "cli-sim",
        "servers": [{"name": "s", "backend": "sim", "model": "m", "settings": {"ttft_ms": 5, "itl_ms": 1}}],
        "workload": {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1, 2]}, "requests": 5},
    }
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_lists_cells_and_steps() -> None:
    proc = cli("validate", "scenarios/quickstart-cpu.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "4 cells × 3 steps" in proc.stdout
    assert "vllm-cpu__quantization-fp8-per-channel__max_num_seqs-16" in proc.stdout
    assert "vllm-cpu__quantization-none__max_num_seqs-4" in proc.stdout and "c1, c8, r1" in proc.stdout
    cell_lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("cell ")]
    assert len(cell_lines) == 4
    assert all(re.search(r"\[[0-9a-f]{16}\]$", line.strip()) for line in cell_lines), cell_lines


def test_validate_bad_file_exits_2_naming_field_and_value(tmp_path: Path) -> None:
    path = sim_scenario(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["workload"]["output_tokens"] = -3
    path.write_text(yaml.safe_dump(data))
    proc = cli("validate", str(path))
    assert proc.returncode == 2
    assert "s.yaml" in proc.stdout and "workload.output_tokens" in proc.stdout and "-3" in proc.stdout


def test_run_with_bad_override_exits_2_before_starting(tmp_path: Path) -> None:
    proc = cli(
        "run", str(sim_scenario(tmp_path)), "--out", str(tmp_path / "out"), "--set", "workload.rate=oops"
    )
    assert proc.returncode == 2
    assert "workload.rate" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_report_rerenders_from_stored_data(tmp_path: Path) -> None:
    proc = cli("run", str(sim_scenario(tmp_path)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    run_dir = next((tmp_path / "out").glob("*-cli-sim"))
    rows = pq.read_table(run_dir / "records.parquet").num_rows
    assert rows == 10
    (run_dir / "report.html").unlink()
    (run_dir / "records.parquet").unlink()
    again = cli("report", str(run_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert pq.read_table(run_dir / "records.parquet").num_rows == rows


def test_report_on_a_non_run_folder_exits_2(tmp_path: Path) -> None:
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2 and "not a run folder" in proc.stdout


def test_run_with_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text(
        '{"prompt": "one two three"}\n{"prompt": "four five", "output_tokens": 7}\n'
    )
    path = sim_scenario(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["workload"]["prompt_tokens"]
    data["workload"]["dataset"] = "prompts.jsonl"
    path.write_text(yaml.safe_dump(data))
    proc = cli("run", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    run_dir = next((tmp_path / "out").glob("*-cli-sim"))
    df = pq.read_table(run_dir / "records.parquet").to_pandas()
    assert len(df) == 10 and df["error_class"].isna().all()
    assert set(df["prompt_tokens"]) == {2, 3}  # the sim counts words
    assert set(df["output_tokens"]) == {4, 7}
