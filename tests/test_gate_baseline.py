"""Baselines: compact, versioned, secret-free, deterministic; env fingerprints compared field by field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gate_synth import ENV, write_run
from harness.gate.baseline import (
    baseline_path,
    fingerprint,
    fingerprint_diff,
    load_baseline,
    resolve_baseline,
    save_baseline,
)
from harness.gate.match import match_runs
from harness.gate.policy import load_policy
from harness.gate.rundata import GateInputError, load_run_folder
from harness.gate.verdict import evaluate


def test_round_trip_keeps_samples_windows_and_summary(tmp_path: Path) -> None:
    run = load_run_folder(write_run(tmp_path / "run", seed=1))
    path = save_baseline(run, "main", tmp_path / "baselines" / "main.json")
    back = load_baseline(path)
    assert back.kind == "baseline" and back.label == "main"
    assert set(back.steps) == set(run.steps)
    a, b = next(iter(run.steps.values())).repeats[0], next(iter(back.steps.values())).repeats[0]
    assert b.n_total == a.n_total and b.n_ok == a.n_ok
    np.testing.assert_allclose(b.tpot_ms, a.tpot_ms, rtol=1e-4)
    assert b.windows["output_tok_s"] == pytest.approx(a.windows["output_tok_s"], rel=1e-4)
    assert back.scenario == run.scenario
    assert fingerprint(back.env) == fingerprint(run.env)


def test_secrets_never_reach_the_baseline(tmp_path: Path) -> None:
    run = load_run_folder(write_run(tmp_path / "run", seed=1))
    run.scenario["servers"][0]["env"] = {"HF_TOKEN": "hf_supersecret"}
    path = save_baseline(run, "main", tmp_path / "main.json")
    text = path.read_text()
    assert "secret-value" not in text and "API_KEY" not in text
    assert "hf_supersecret" not in text and "HF_TOKEN" in text


def test_downsampling_is_deterministic_and_window_rates_use_all_requests(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", seed=1)
    full = load_run_folder(folder)
    small1 = load_run_folder(folder, max_requests=60, max_itl=100)
    small2 = load_run_folder(folder, max_requests=60, max_itl=100)
    f, s1, s2 = (next(iter(r.steps.values())).repeats[0] for r in (full, small1, small2))
    assert s1.ttft_ms.size == 60 and s1.itl_ms.size == 100
    np.testing.assert_array_equal(s1.ttft_ms, s2.ttft_ms)
    assert s1.n_total == f.n_total
    assert s1.windows == f.windows


def test_baseline_gate_agrees_with_run_folder_gate(tmp_path: Path) -> None:
    base_run = load_run_folder(write_run(tmp_path / "b", seed=1))
    slow = load_run_folder(write_run(tmp_path / "s", seed=2, itl_ms=11.5))
    base = load_baseline(save_baseline(base_run, "b", tmp_path / "b.json"))
    pol = load_policy()
    v1 = {c.metric: c.verdict for c in evaluate(match_runs(base, slow), pol, "b", "s").checks}
    v2 = {c.metric: c.verdict for c in evaluate(match_runs(base_run, slow), pol, "b", "s").checks}
    assert v1 == v2


def test_schema_version_and_bad_files_are_refused(tmp_path: Path) -> None:
    run = load_run_folder(write_run(tmp_path / "run", seed=1))
    path = save_baseline(run, "main", tmp_path / "main.json")
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(GateInputError, match="schema_version is 99"):
        load_baseline(path)
    with pytest.raises(GateInputError, match="baseline not found"):
        load_baseline(tmp_path / "nope.json")
    path.write_text("{not json")
    with pytest.raises(GateInputError, match="not valid JSON"):
        load_baseline(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(GateInputError, match="not a tokenbench baseline"):
        load_baseline(path)


def test_names_and_resolution() -> None:
    assert baseline_path("main", Path("reports/baselines")) == Path("reports/baselines/main.json")
    with pytest.raises(GateInputError, match="--name"):
        baseline_path("../evil")
    assert resolve_baseline("main") == Path("reports/baselines/main.json")
    assert resolve_baseline("ci/base.json") == Path("ci/base.json")


def test_fingerprint_diff_lists_every_difference() -> None:
    a = {**ENV, "gpu": {"name": "NVIDIA A100", "driver": "550.1"}}
    b = {
        **ENV,
        "gpu": {"name": "NVIDIA H100", "driver": "550.1"},
        "versions": {**ENV["versions"], "backends": {"sim-a": "0.2.0", "vllm": "0.11"}},
    }
    diffs = fingerprint_diff(fingerprint(a), fingerprint(b))
    assert any("gpu" in d and "A100" in d and "H100" in d for d in diffs)
    assert any("sim-a" in d and "0.2.0" in d for d in diffs)
    assert any("vllm" in d and "absent" in d for d in diffs)
    assert not any("driver" in d for d in diffs)
    assert fingerprint_diff(fingerprint(ENV), fingerprint(dict(ENV))) == []
    # harness or python upgrades alone are not an environment change
    c = {**ENV, "versions": {**ENV["versions"], "python": "3.12", "harness": "9.9"}}
    assert fingerprint_diff(fingerprint(ENV), fingerprint(c)) == []
