"""A/A: reruns of one configuration, each gated against a baseline from another run, give no regression.

``python -m harness.gate.aa`` is the tool (see docs/ci.md); these tests run
it. The synthetic test is fast and also proves the tool can fail. The real
ones rerun a scenario: a short vLLM-CPU scenario 3 times (``vllm`` marker),
and ``scenarios/ci-sim.yaml`` N times when ``TOKENBENCH_AA_RERUNS=N`` is set
(about a minute per rerun, so it is opt-in; the figures in docs/ci.md and the
issue report came from N = 10).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from gate_synth import write_run
from harness.gate.aa import main as aa_main

REPO = Path(__file__).resolve().parents[1]


def _pairings(out: Path) -> list[dict]:
    return json.loads((out / "aa.json").read_text())


def test_aa_tool_passes_reruns_and_flags_a_slower_one(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / f"r{i}", seed=40 + i) for i in range(4)]
    code = aa_main(["--runs", *map(str, runs), "--pool", "1", "--pool", "3", "--out", str(tmp_path / "aa")])
    pairings = _pairings(tmp_path / "aa")
    assert code == 0 and len(pairings) == 8  # 4 runs × pools 1 and 3
    assert not [p for p in pairings if p["regressions"]]
    assert {p["verdict"] for p in pairings if len(p["baseline"]) == 1} == {"inconclusive"}  # tails, 1 repeat
    slow = write_run(tmp_path / "slow", seed=50, itl_ms=11.5)
    code = aa_main(["--runs", *map(str, runs[:2]), str(slow), "--pool", "1", "--out", str(tmp_path / "bad")])
    assert code == 1 and any("tpot_p50" in r for p in _pairings(tmp_path / "bad") for r in p["regressions"])


@pytest.mark.skipif(
    not os.environ.get("TOKENBENCH_AA_RERUNS"), reason="set TOKENBENCH_AA_RERUNS=10 (~10 min)"
)
def test_ci_sim_reruns_never_regress(tmp_path: Path) -> None:
    n = int(os.environ["TOKENBENCH_AA_RERUNS"])
    policy = REPO / "reports/baselines/ci-sim.policy.yaml"
    code = aa_main(
        [
            str(REPO / "scenarios/ci-sim.yaml"),
            "--reruns",
            str(n),
            "--out",
            str(tmp_path),
            "--policy",
            str(policy),
        ]
    )
    assert code == 0, [p for p in _pairings(tmp_path) if p["regressions"]]


@pytest.mark.vllm
def test_vllm_cpu_reruns_never_regress(tmp_path: Path) -> None:
    scenario = {
        "name": "aa-vllm",
        "seed": 11,
        "servers": [
            {
                "name": "vllm",
                "backend": "vllm",
                "model": "tokenbench:tiny-llama",
                "startup_timeout_s": 300,
                "env": {"VLLM_CPU_OMP_THREADS_BIND": "0"},
                "settings": {"max_num_seqs": 4, "max_model_len": 512, "dtype": "float32"},
            }
        ],
        "workload": {
            "api": "completions",
            "prompt_tokens": 32,
            "output_tokens": 16,
            "ignore_eos": True,
            "steps": {"concurrency": [2]},
            "warmup_s": 3,
            "duration_s": 30,
            "timeout_s": 60,
        },
    }
    path = tmp_path / "aa-vllm.yaml"
    path.write_text(yaml.safe_dump(scenario))
    code = aa_main([str(path), "--reruns", "3", "--pool", "1", "--pool", "2", "--out", str(tmp_path / "aa")])
    pairings = _pairings(tmp_path / "aa")
    for p in pairings:
        print(
            p["policy"], "+".join(p["baseline"]), "→", p["run"], p["verdict"], p["counts"], p["regressions"]
        )
    assert code == 0, [p for p in pairings if p["regressions"]]
