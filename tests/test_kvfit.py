"""The pre-flight KV-fit estimate: which cells it warns about, with what numbers, and that
``validate`` prints it as a warning (exit 0) while a bad ``gpu`` is an error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli_runner import REPO, tokenbench
from harness.hardware.memory import kv_budget, kv_bytes_per_token, weight_bytes
from harness.hardware.profiles import get_gpu, get_model, resolve_gpu
from harness.kvfit import kv_fit_warnings, mean_length
from harness.matrix import expand_cells
from harness.scenario import load_scenario, parse_scenario
from harness.workload import LengthDist

MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"


def scenario(servers: list[dict], prompt: object = 1024, output: object = 256) -> dict:
    return {
        "name": "kv",
        "servers": servers,
        "workload": {
            "api": "chat",
            "prompt_tokens": prompt,
            "output_tokens": output,
            "steps": {"concurrency": [1]},
            "requests": 4,
        },
    }


def warnings_of(data: dict) -> list[str]:
    sc = parse_scenario(data, "kv.yaml")
    return kv_fit_warnings(sc, expand_cells(sc))


def test_budget_matches_a_hand_calculation() -> None:
    gpu, model = get_gpu("a10g-24gb"), get_model("mistral-7b")
    sized = kv_budget(gpu, model, memory_fraction=0.9, batched_tokens=2048, max_seqs=16)
    # 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes
    assert kv_bytes_per_token(model) == 131072
    assert sized.weights == weight_bytes(model) == pytest.approx(7248023552 * 2)
    activations = 2048 * (3 * 14336 + 4 * 4096) * 2 + 16 * 32768 * 8
    left = 24e9 * 0.9 - 7248023552 * 2 - 1e9 - activations
    assert sized.kv_tokens == int(left // 131072)


def test_vllm_batch_over_the_kv_cache_is_warned_with_its_numbers() -> None:
    server = {"name": "v", "backend": "vllm", "model": MISTRAL, "gpu": "a10g"}
    lines = warnings_of(scenario([{**server, "settings": {"max_num_seqs": [16, 128]}}]))
    assert len(lines) == 1
    (line,) = lines
    assert line.startswith(
        "cell 'v__max_num_seqs-128': kv-fit: settings.max_num_seqs 128 x (1024 prompt + 256"
    )
    assert "= 163,840 tokens exceeds" in line and "mistral-7b (bf16 weights 14.5 GB) on a10g-24gb" in line
    # 4-bit weights leave room for a 4x larger batch (about 96 sequences fit: 64 does, 128 does not)
    awq = {
        **server,
        "model": "solidrust/Mistral-7B-Instruct-v0.3-AWQ",
        "settings": {"max_num_seqs": [64, 128]},
    }
    (line,) = warnings_of(scenario([awq]))
    assert "max_num_seqs-128" in line and "4-bit AWQ weights 4.2 GB" in line and "about 96 sequences" in line


def test_tgi_uses_max_batch_size_and_a_smaller_max_batch_total_tokens() -> None:
    server = {"name": "t", "backend": "tgi", "model": MISTRAL, "gpu": "a10g-24gb", "api": "chat"}
    assert warnings_of(scenario([{**server, "settings": {"max_batch_size": 16}}])) == []
    (line,) = warnings_of(scenario([{**server, "settings": {"max_batch_size": 64}}]))
    assert "settings.max_batch_size 64" in line and "memory fraction 0.90" in line
    capped = {"max_batch_size": 16, "max_batch_total_tokens": 10000}
    (line,) = warnings_of(scenario([{**server, "settings": capped}]))
    assert "exceeds settings.max_batch_total_tokens 10000: 10,000 tokens; about 7 sequences fit" in line


def test_no_gpu_no_batch_setting_or_no_profile() -> None:
    base = {"name": "v", "backend": "vllm", "model": MISTRAL}
    assert warnings_of(scenario([{**base, "settings": {"max_num_seqs": 512}}])) == []  # no gpu given
    assert warnings_of(scenario([{**base, "gpu": "a10g"}])) == []  # no batch setting: nothing to check
    (line,) = warnings_of(
        scenario([{**base, "model": "org/unknown-3b", "gpu": "a10g", "settings": {"max_num_seqs": 8}}])
    )
    assert "matches no model profile" in line and "no estimate" in line
    sim = {"name": "s", "backend": "sim", "model": MISTRAL, "gpu": "a10g"}
    assert warnings_of(scenario([sim])) == []  # a backend without a KV model


def test_mean_lengths() -> None:
    assert mean_length(LengthDist(dist="fixed", value=7)) == 7
    assert mean_length(LengthDist(dist="uniform", min=10, max=30)) == 20
    assert mean_length(LengthDist(dist="normal", mean=512, stddev=128, min=128, max=1024)) == 512
    assert mean_length(LengthDist(dist="normal", mean=512, stddev=1, max=300)) == 300
    assert mean_length(None) == 0


def test_gpu_names_resolve_by_prefix() -> None:
    assert resolve_gpu("a10g") == "a10g-24gb" and resolve_gpu("h100-80gb") == "h100-80gb"
    with pytest.raises(ValueError, match="matches several"):
        resolve_gpu("a100")


def test_validate_prints_the_warning_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "kv.yaml"
    server = {
        "name": "v",
        "backend": "vllm",
        "model": MISTRAL,
        "gpu": "a10g",
        "settings": {"max_num_seqs": 128},
    }
    path.write_text(yaml.safe_dump(scenario([server])))
    out = tokenbench("validate", path)
    assert out.returncode == 0, out.stdout
    text = " ".join(out.stdout.split())
    assert "warning: cell 'v': kv-fit: settings.max_num_seqs 128" in text
    server["gpu"] = "a20"
    path.write_text(yaml.safe_dump(scenario([server])))
    out = tokenbench("validate", path)
    assert out.returncode == 2
    assert "servers[0].gpu: 'a20' is not a GPU profile; known: a10g-24gb" in " ".join(out.stdout.split())


def test_the_gpu_scenario_batch_settings_fit() -> None:
    """scenarios/mistral-7b-a10g.yaml is sized so every batch setting is reachable on 24 GB."""
    sc = load_scenario(REPO / "scenarios" / "mistral-7b-a10g.yaml")
    cells = expand_cells(sc)
    assert {c.server.backend for c in cells} == {"vllm", "tgi"}
    assert {c.server.gpu for c in cells} == {"a10g-24gb"}
    assert kv_fit_warnings(sc, cells) == []
    # the same file at the old batch setting (128) would be warned about
    bigger = [c for c in cells if c.server.backend == "vllm" and c.server.name == "vllm-bf16"][0]
    bigger = bigger.__class__(**{**bigger.__dict__, "settings": {**bigger.settings, "max_num_seqs": 128}})
    assert len(kv_fit_warnings(sc, [bigger])) == 1
