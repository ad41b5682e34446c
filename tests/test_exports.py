"""Exports of a run: records.csv, summary.csv, summary.md, the derived records columns, the clock anchor
and the published summary.json schema. A real (sim-backed) run from an empty folder, plus synthetic runs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from cli_runner import tokenbench
from harness.metrics import per_request_frame
from harness.records import RECORD_SCHEMA, read_records
from harness.report.data import load_run
from harness.report.outputs import MAX_SUMMARY_MD, short_markdown, write_outputs
from harness.results import RunSummary
from harness.schemas import SUMMARY_SCHEMA_PATH, schema_text
from synthetic_run import SyntheticOptions, make_run

SCENARIO = {
    "name": "exports",
    "seed": 3,
    "servers": [
        {"name": "sim-a", "backend": "sim", "model": "sim-model", "settings": {"ttft_ms": 20, "itl_ms": 4}}
    ],
    "workload": {
        "api": "completions",
        "prompt_tokens": 8,
        "output_tokens": 10,
        "steps": {"concurrency": [2], "rate": [20]},
        "requests": 12,
        "timeout_s": 20,
    },
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tokenbench run`` from an empty folder: the run lands in ./reports, caches in TOKENBENCH_HOME."""
    work = tmp_path_factory.mktemp("exports")
    (work / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    res = tokenbench("run", "s.yaml", cwd=work, extra_env={"TOKENBENCH_HOME": str(work / "home")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (found,) = (work / "reports").glob("*-exports")
    return found


def test_every_run_writes_the_exports(run_dir: Path) -> None:
    for name in (
        "summary.md",
        "summary.csv",
        "records.csv",
        "records.parquet",
        "report.html",
        "summary.json",
    ):
        assert (run_dir / name).is_file(), name
    # a sim run builds no backend environment or model in the home: only the load client's native
    # reader (harness.load.nativeread), compiled on first use
    home = run_dir.parent.parent / "home"
    assert sorted(p.name for p in home.iterdir()) == ["bin"]
    built = sorted(p.name for p in (home / "bin").iterdir())
    assert built and all(n.startswith("tokenbench-nativeread-") and n.endswith(".so") for n in built), built


def test_records_csv_is_the_derived_table_of_every_request(run_dir: Path) -> None:
    raw = read_records(run_dir / "records.parquet").to_pandas()
    csv = pd.read_csv(run_dir / "records.csv")
    assert len(csv) == len(raw) == 24 + len(csv[csv["warmup"]])  # 12 measured per step, two steps
    assert list(csv["request_id"]) == list(raw["request_id"]) and list(csv["step_id"]) == list(raw["step_id"])
    expected = per_request_frame(raw)
    for col in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms"):
        np.testing.assert_allclose(csv[col].to_numpy(), expected[col].to_numpy(), rtol=1e-9, equal_nan=True)
    ok = csv[csv["ok"]]
    np.testing.assert_allclose(ok["ttft_ms"], (ok["first_token_ns"] - ok["scheduled_ns"]) / 1e6, rtol=1e-9)
    assert (ok["e2e_ms"] > ok["ttft_ms"]).all() and (ok["ttft_ms"] > 0).all()
    assert not any(isinstance(v, list) for v in csv.iloc[0])


def test_records_parquet_keeps_raw_stamps_beside_derived_columns(run_dir: Path) -> None:
    table = pq.read_table(run_dir / "records.parquet")
    assert table.schema.names[: len(RECORD_SCHEMA)] == RECORD_SCHEMA.names  # raw first, unchanged
    for col in ("ok", "ttft_ms", "tpot_ms", "e2e_ms", "start_utc", "end_utc"):
        assert col in table.schema.names
    frame = table.to_pandas()
    assert frame["chunk_times_ns"].map(len).gt(0).all()  # list columns kept in Parquet
    # re-rendering (tokenbench report) rebuilds the same file: idempotent
    res = tokenbench("report", run_dir)
    assert res.returncode == 0, res.stderr
    again = pq.read_table(run_dir / "records.parquet").to_pandas()
    pd.testing.assert_frame_equal(frame.drop(columns=["chunk_times_ns", "chunk_tokens"]),
                                  again.drop(columns=["chunk_times_ns", "chunk_tokens"]))  # fmt: skip


def test_wall_clock_anchor_maps_records_into_the_run_window(run_dir: Path) -> None:
    summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    assert summary.clock is not None and summary.clock.uncertainty_ns < 10_000_000
    zero = dt.datetime.strptime(summary.clock.monotonic_zero_utc, "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs(zero.timestamp() * 1e9 - summary.clock.wall_minus_monotonic_ns) < 2_000  # µs text
    started = dt.datetime.fromisoformat(summary.started_at)
    finished = dt.datetime.fromisoformat(summary.finished_at or "")
    frame = pq.read_table(run_dir / "records.parquet").to_pandas()
    slack = pd.Timedelta(seconds=1)  # started_at/finished_at are whole seconds
    assert (frame["start_utc"] >= started - slack).all() and (frame["end_utc"] <= finished + slack).all()
    offset = pd.to_datetime(
        frame["scheduled_ns"] + summary.clock.wall_minus_monotonic_ns, unit="ns", utc=True
    )
    assert (frame["start_utc"] == offset).all()
    csv = pd.read_csv(run_dir / "records.csv")
    assert pd.to_datetime(csv["start_utc"], utc=True).sub(frame["start_utc"]).abs().max() < pd.Timedelta(
        "1us"
    )


def test_summary_csv_has_one_row_per_cell_and_step(run_dir: Path) -> None:
    summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    csv = pd.read_csv(run_dir / "summary.csv")
    pairs = [(c.cell_id, s.step_id) for c in summary.cells for s in c.steps]
    assert list(zip(csv["cell_id"], csv["step_id"], strict=True)) == pairs and len(pairs) == 2
    for (_, step), (_, row) in zip(
        [(c, s) for c in summary.cells for s in c.steps], csv.iterrows(), strict=True
    ):
        assert row["ttft_ms_p95"] == pytest.approx(step.ttft_ms.p95)
        assert row["requests_ok"] == step.requests_ok and row["output_tok_s"] == pytest.approx(
            step.output_tok_s
        )
        assert bool(row["harness_limited"]) == step.harness.limited
    assert json.loads(csv["settings"][0]) == {"itl_ms": 4, "ttft_ms": 20}


def test_summary_md_is_the_markdown_report(run_dir: Path) -> None:
    md = (run_dir / "summary.md").read_text()
    assert md.startswith("### tokenbench: exports") and "SIMULATED" in md
    assert md == short_markdown(load_run(run_dir)) and len(md) <= MAX_SUMMARY_MD
    assert sum(1 for line in md.splitlines() if line.startswith("| sim-a")) == 2


def test_summary_md_drops_rows_to_fit_a_comment(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path / "r", SyntheticOptions(concurrencies=tuple(range(1, 13)))))
    full = short_markdown(run)
    assert "more rows" not in full and sum(1 for x in full.splitlines() if x.startswith("| vllm-")) == 24
    short = short_markdown(run, limit=len(full) // 2)
    assert len(short) <= len(full) // 2
    kept = sum(1 for x in short.splitlines() if x.startswith("| vllm-"))
    assert 0 < kept < 24 and f"… {24 - kept} more rows" in short


def test_outputs_of_a_synthetic_run_without_clock(tmp_path: Path) -> None:
    """Older runs have no anchor: the UTC columns are empty, every other export is written."""
    run_dir = make_run(tmp_path / "old", SyntheticOptions())
    write_outputs(run_dir)
    csv = pd.read_csv(run_dir / "records.csv")
    assert csv["start_utc"].isna().all() and csv["ttft_ms"].notna().any()
    assert len(pd.read_csv(run_dir / "summary.csv")) == 6


def test_summary_json_schema_is_published_and_current(run_dir: Path) -> None:
    assert SUMMARY_SCHEMA_PATH.read_text() == schema_text(), "stale: run `python -m harness.schemas`"
    schema = json.loads(SUMMARY_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = json.loads((run_dir / "summary.json").read_text())
    validator.validate(data)
    data["cells"][0]["steps"][0]["kind"] = "burst"
    del data["run_id"]
    messages = sorted(e.message for e in validator.iter_errors(data))
    assert messages == ["'burst' is not one of ['concurrency', 'rate']", "'run_id' is a required property"]


def test_rerender_of_an_unchanged_run_leaves_the_exports_alone(tmp_path: Path) -> None:
    """A second render writes neither records file again; a changed records file is exported afresh."""
    run_dir = make_run(tmp_path / "r", SyntheticOptions())
    write_outputs(run_dir)
    parquet, csv = run_dir / "records.parquet", run_dir / "records.csv"
    stamps = (parquet.stat().st_mtime_ns, csv.stat().st_mtime_ns)
    assert stamps[1] >= stamps[0]  # the CSV never reads as older than the Parquet file it was written with
    write_outputs(run_dir)
    assert (parquet.stat().st_mtime_ns, csv.stat().st_mtime_ns) == stamps
    raw = read_records(parquet)  # raw columns only: as a fresh merge would leave it
    pq.write_table(raw.slice(0, raw.num_rows - 1), parquet)
    write_outputs(run_dir)
    assert len(pd.read_csv(csv)) == raw.num_rows - 1 and "ttft_ms" in pq.read_schema(parquet).names
