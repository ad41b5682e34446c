"""``scenarios/sim-smoke.yaml`` end to end, plus the pieces it relies on.

The smoke run is what CI uses to exercise every protocol and the report's
paths without a GPU: three protocols (OpenAI, TGI, TGIS gRPC) on the sim's
engine mode, two engine configurations each. Its wall time is not asserted.

The unit tests below cover what the smoke run needs from other modules: the
per-server ``api`` override in scenarios, TGI counters keeping the names TGI
exposes, and the modelled VRAM of simulated runs in the memory summary.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cli_runner import tokenbench
from harness.scenario import ScenarioError, load_scenario, parse_scenario
from harness.sim.metrics import SimCounters, render
from harness.telemetry.prometheus import parse_metrics
from harness.telemetry.summary import memory_summary

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "scenarios" / "sim-smoke.yaml"


def _scenario(**server: Any) -> dict[str, Any]:
    return {
        "name": "s",
        "servers": [{"name": "a", "backend": "sim", "model": "m", **server}],
        "workload": {
            "prompt_tokens": 4,
            "output_tokens": 4,
            "steps": {"concurrency": [1]},
            "requests": 1,
        },
    }


# --- scenario: per-server api ------------------------------------------------------------------


def test_server_api_defaults_to_none_and_accepts_each_protocol() -> None:
    assert parse_scenario(_scenario()).servers[0].api is None
    for api in ("completions", "chat", "tgi", "tgis"):
        assert parse_scenario(_scenario(api=api)).servers[0].api == api


def test_server_api_is_validated_against_the_protocol_registry() -> None:
    # Which backend serves which protocol is the backends' own declaration (harness/backends), not a
    # rule in scenario.py; here only the name is checked, for the server and the workload default.
    with pytest.raises(
        ScenarioError, match=r"servers\[0\]\.api: unknown protocol 'grpc' \(known: caikit-grpc"
    ):
        parse_scenario(_scenario(api="grpc"), "f.yaml")
    with pytest.raises(ScenarioError, match="backend 'vllm' does not serve api 'tgis'"):
        parse_scenario(_scenario(backend="vllm", api="tgis"))
    bad = _scenario(backend="vllm")
    bad["workload"]["api"] = "tgis"  # the workload default counts too
    with pytest.raises(ScenarioError, match="server 'a'.*tgis"):
        parse_scenario(bad)
    with pytest.raises(ScenarioError, match="backend 'vllm' does not serve api 'tgi'"):
        parse_scenario(_scenario(backend="vllm", api="tgi"))
    # An external endpoint may speak any protocol (its readiness probe says whether it does).
    external = _scenario(backend="external", base_url="http://x")
    external["workload"]["api"] = "tgis"
    parse_scenario(external)

    bad = _scenario()
    bad["workload"]["api"] = "tgis-x"  # the workload default is checked too
    with pytest.raises(ScenarioError, match=r"workload\.api: unknown protocol 'tgis-x'"):
        parse_scenario(bad)
    assert parse_scenario(_scenario(backend="sim", api="caikit-http")).servers[0].api == "caikit-http"


def test_smoke_scenario_covers_three_protocols_and_two_configurations() -> None:
    from harness.matrix import expand_cells

    sc = load_scenario(SMOKE)
    cells = expand_cells(sc)
    assert {c.server.api for c in cells} == {"completions", "tgi", "tgis"}
    assert sorted({c.settings["max_num_seqs"] for c in cells}) == [8, 32]  # type: ignore[type-var]
    assert all(c.settings["mode"] == "engine" for c in cells)


# --- telemetry: TGI counter names and modelled VRAM -----------------------------------------


def test_tgi_counters_keep_the_names_tgi_exposes() -> None:
    text = render(
        SimCounters(requests_total=5, success_total={"length": 4}, failure_total=1, prompt_tokens_total=9),
        api="tgi",
        mode="exact",
        model="m",
    )
    got = {s.name: s.value for s in parse_metrics(text)}
    assert got["tgi_request_count"] == 5.0
    assert got["tgi_request_success"] == 4.0 and got["tgi_request_failure"] == 1.0
    assert got["tgi_request_input_length_sum"] == 9.0
    assert not any(name.startswith("tgi_") and name.endswith("_total") for name in got)


def test_counters_exposed_with_total_keep_it() -> None:
    text = "# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total 4\n# TYPE foo counter\nfoo_total 1\n"
    names = {s.name for s in parse_metrics(text)}
    assert "vllm:prompt_tokens_total" in names


def test_memory_summary_uses_modelled_vram_without_a_gpu() -> None:
    rows = []
    for i, (step, total) in enumerate([(None, 10.0), ("c1", 20.0), ("c1", 20.0), (None, 30.0)]):
        rows.append(
            {
                "t_ns": i,
                "step_id": step,
                "source": "prometheus",
                "name": "tokenbench_sim_vram_total_bytes",
                "value": total * 2**20,
            }
        )
        rows.append({"t_ns": i, "step_id": step, "source": "process", "name": "rss_bytes", "value": 2**20})
    mem = memory_summary(rows, ["c1"])
    assert mem.gpu_present is False  # no GPU was there...
    assert (mem.peak_vram_mb, mem.steady_vram_mb) == (30.0, 20.0)  # ...but the modelled VRAM is reported
    gpu_rows = rows + [
        {"t_ns": 1, "step_id": "c1", "source": "gpu", "name": "gpu_used_bytes", "value": 5 * 2**20}
    ]
    assert memory_summary(gpu_rows, ["c1"]).peak_vram_mb == 5.0  # a measured GPU wins over the model


# --- the smoke run itself ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("smoke")
    proc = tokenbench("run", SMOKE, "--out", out, timeout=300)
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, proc.stdout + proc.stderr
    return proc, runs[0]


def test_smoke_run_exits_zero_with_every_cell_ok(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, run_dir = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] is True
    assert len(summary["cells"]) == 6
    for cell in summary["cells"]:
        assert cell["status"] == "ok", cell.get("error")
        assert cell["simulated"] is True
        step = cell["steps"][0]
        assert step["requests_ok"] == step["requests_total"] == 32
        assert cell["memory"]["gpu_present"] is False and cell["memory"]["peak_vram_mb"] > 1000


def test_smoke_records_have_every_protocol_with_exact_counts(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, run_dir = smoke_run
    rows = pq.read_table(run_dir / "records.parquet").to_pylist()
    assert {r["api"] for r in rows} == {"completions", "tgi", "tgis"}
    for api in ("completions", "tgi", "tgis"):
        mine = [r for r in rows if r["api"] == api]
        assert len(mine) == 64  # two cells x 32 requests
        assert len({r["cell_id"] for r in mine}) == 2
    for r in rows:
        assert r["error_class"] is None, (r["api"], r["error_message"])
        assert r["simulated"] is True
        assert r["output_tokens"] == r["requested_output_tokens"] == sum(r["chunk_tokens"]) == 24
        assert r["token_source"] == "usage"
        assert r["sent_ns"] < r["first_token_ns"] < r["end_ns"]  # TTFT < E2E


def test_smoke_report_has_the_modelled_vram_panels(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, run_dir = smoke_run
    html = (run_dir / "report.html").read_text()
    assert 'id="memory_timeline"' in html and 'id="memory_peak"' in html
    assert "SIMULATED: modelled VRAM" in html  # the timeline panel's title
    assert "GPU memory: SIMULATED (modelled VRAM)" in html  # the peak/steady bars' title
    assert "tgi_batch_current_size" in html  # the queue panel reads TGI's gauges too
