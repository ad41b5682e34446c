"""``make bench-scale`` at a tiny size: the synthetic run is a real run folder and the table has its columns."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from harness.records import read_records
from harness.results import RunSummary
from harness.scale_bench import CHUNKS, main, table


def test_bench_scale_measures_report_and_gate_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--sizes", "800", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| requests"))
    for column in (
        "records on disk (MB)",
        "report s",
        "report MB",
        "re-render s",
        "gate s",
        "gate MB",
        "growth",
    ):
        assert column in header
    assert any(line.startswith("| 800 |") for line in out.splitlines())
    run = tmp_path / "run-800"
    records = read_records(run / "records.parquet")
    assert records.num_rows == 800  # 2 cells x 4 steps x 100
    ok = records.filter(pc.is_null(records.column("error_class")))
    assert set(pc.list_value_length(ok.column("chunk_times_ns")).to_pylist()) == {CHUNKS}
    summary = RunSummary.model_validate_json((run / "summary.json").read_text())
    assert sum(s.requests_total for c in summary.cells for s in c.steps) == 800
    assert (run / "report.html").is_file() and (tmp_path / "gate-800" / "gate.json").is_file()
    assert (run / ".generated").is_file()  # cached: a second call reuses it


def test_table_gives_growth_per_tenfold() -> None:
    small = {"requests": 1000, "records_mb": 1, "report_s": 1.0, "report_mb": 100, "rerender_s": 1.0,
             "rerender_mb": 100, "gate_s": 2.0, "gate_mb": 100}  # fmt: skip
    big = {"requests": 100_000, "records_mb": 100, "report_s": 100.0, "report_mb": 400, "rerender_s": 10.0,
           "rerender_mb": 100, "gate_s": 20.0, "gate_mb": 100}  # fmt: skip
    last = table([small, big]).splitlines()[-1]
    # 100x in two decades: report time x10 per 10x, memory x2, re-render x3.2 / x1, gate x3.2 / x1
    assert last.startswith("| 100,000 |") and last.endswith("| x10.0 / x2.0 / x3.2 / x1.0 / x3.2 / x1.0 |")
