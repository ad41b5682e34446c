"""The ``tgis`` and ``caikit`` backends without their servers: commands, configs, settings, specs.

Why these checks: the launch of a real Caikit cell takes minutes, so what can be decided before
it (the adapter's flags, the runtime and model configs, which settings are legal, which
environments and protocols a server needs, the concurrency cap) is pinned here, each in a way
that a wrong mapping fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.backends.base import BackendStartError, ConcurrencyCap
from harness.backends.caikit import CaikitBackend, special_tokens, write_configs
from harness.backends.process import ProcessRegistry
from harness.backends.registry import get_spec
from harness.backends.tgis import build_tgis_command
from harness.backends.vllm import build_command
from harness.home import tokenbench_home
from harness.matrix import Cell
from harness.run import validate_cells
from harness.scenario import ScenarioError, Server, parse_scenario

HOME = tokenbench_home()  # make and conftest: the checkout's .cache


def _cell(backend: str, settings: dict, **server: object) -> Cell:
    srv = Server.model_validate(
        {"name": "s", "backend": backend, "model": "m", "settings": settings, **server}
    )
    return Cell("s", srv, settings)


def _scenario(server: dict, api: str) -> dict:
    return {
        "name": "t",
        "servers": [{"name": "a", "model": "m", **server}],
        "workload": {"api": api, "prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]},
                     "duration_s": 1},
    }  # fmt: skip


def test_tgis_command_is_the_references_with_the_vllm_flags() -> None:
    settings = {"max_num_seqs": 4, "dtype": "bfloat16", "quantization": "fp8_per_channel"}
    cell = _cell("tgis", settings, served_model_name="tiny", max_model_len=1024, args=["--seed", "3"])
    command, env = build_tgis_command(
        cell, python=Path("/py"), http_port=8000, grpc_port=8033, home=HOME, cpu=True
    )
    assert command[:12] == [
        "/py", "-m", "vllm_tgis_adapter", "--model", "m", "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "8000", "--grpc-port",
    ]  # fmt: skip
    assert command[12] == "8033"
    vllm_command, vllm_env = build_command(cell, python=Path("/py"), port=8000, home=HOME, cpu=True)
    # One setting, one flag: the engine flags after the entry point are the vllm backend's.
    assert command[13:] == vllm_command[11:]
    assert ["--max-num-seqs", "4"] == command[command.index("--max-num-seqs") :][:2]
    assert "--enforce-eager" in command and command[-2:] == ["--seed", "3"]
    assert env == {**vllm_env, "VLLM_TARGET_DEVICE": "cpu"}
    no_cpu, env = build_tgis_command(cell, python=Path("/py"), http_port=1, grpc_port=2, home=HOME, cpu=False)
    assert "--enforce-eager" not in no_cpu and "VLLM_TARGET_DEVICE" not in env


def test_caikit_configs_point_the_runtime_at_the_tgis_port(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "special_tokens_map.json").write_text(
        '{"bos_token": {"content": "<|b|>"}, "eos_token": "<|e|>"}', encoding="utf-8"
    )
    path = write_configs(
        tmp_path / "cell", "tiny", model_dir=model_dir, grpc_port=1, http_port=2, metrics_port=3,
        tgis="127.0.0.1:8033",
    )  # fmt: skip
    runtime = yaml.safe_load(path.read_text(encoding="utf-8"))["runtime"]
    assert runtime["library"] == "caikit_nlp"
    assert runtime["local_models_dir"] == str(tmp_path / "cell" / "models")
    assert (runtime["grpc"]["port"], runtime["http"]["port"], runtime["metrics"]["port"]) == (1, 2, 3)
    assert (
        runtime["grpc"]["unix_socket_path"] == ""
        and runtime["service_generation"]["enable_training"] is False
    )
    init = yaml.safe_load(path.read_text(encoding="utf-8"))["model_management"]["initializers"]["default"]
    assert init["type"] == "LOCAL"
    (tgis,) = init["config"]["backend_priority"]
    assert tgis == {
        "type": "TGIS",
        "config": {"connection": {"hostname": "127.0.0.1:8033"}, "test_connections": True},
    }
    model = yaml.safe_load((tmp_path / "cell" / "models" / "tiny" / "config.yml").read_text(encoding="utf-8"))
    assert (
        model["module_class"] == "caikit_nlp.modules.text_generation.text_generation_tgis.TextGenerationTGIS"
    )
    assert model["module_id"] == "f9181353-4ccf-4572-bd1e-f12bcda26792"
    assert (model["model_name"], model["bos_token"], model["eos_token"]) == ("tiny", "<|b|>", "<|e|>")
    assert special_tokens(tmp_path / "nowhere") == ("<s>", "</s>")


def test_specs_protocols_environments_and_cap() -> None:
    tgis, caikit = get_spec("tgis"), get_spec("caikit")
    assert tgis.protocols == ("completions", "chat", "tgis")
    assert caikit.protocols == ("caikit-grpc", "caikit-http")
    plain = Server(name="a", backend="caikit", model="m")
    assert caikit.environments(plain, HOME) == ["tgis", "caikit"]
    assert tgis.environments(Server(name="a", backend="tgis", model="m"), HOME) == ["tgis"]
    own = Server(name="a", backend="caikit", model="m", python="/opt/my/python")
    assert caikit.environments(own, HOME) == ["tgis"]
    assert caikit.concurrency_cap({}) == ConcurrencyCap(5, "grpc_server_thread_pool_size")
    assert caikit.concurrency_cap({"grpc_server_thread_pool_size": 16}).limit == 16
    assert tgis.concurrency_cap({}) is None


@pytest.mark.parametrize(
    ("backend", "settings", "message"),
    [
        (
            "caikit",
            {"grpc_server_thread_pool_size": 0},
            "settings.grpc_server_thread_pool_size: must be >= 1, got 0",
        ),
        ("caikit", {"max_num_seqs": [4, -4]}, "settings.max_num_seqs: must be >= 1, got -4"),
        ("tgis", {"gpu_memory_utilization": 1.5}, "settings.gpu_memory_utilization.*1.5"),
        ("tgis", {"grpc_server_thread_pool_size": 5}, "grpc_server_thread_pool_size"),
        ("caikit", {"dtype": "float8"}, "'float8' is not one of"),
    ],
)
def test_bad_settings_fail_at_validate_naming_field_and_value(backend, settings, message) -> None:
    api = "caikit-grpc" if backend == "caikit" else "tgis"
    with pytest.raises(ScenarioError, match=message):
        validate_cells(parse_scenario(_scenario({"backend": backend, "settings": settings}, api)))


def test_pool_size_is_a_sweep_axis_and_protocols_are_checked() -> None:
    from harness.matrix import expand_cells

    sc = parse_scenario(
        _scenario({"backend": "caikit", "settings": {"grpc_server_thread_pool_size": [2, 8]}}, "caikit-http")
    )
    assert sorted(c.settings["grpc_server_thread_pool_size"] for c in expand_cells(sc)) == [2, 8]
    with pytest.raises(ScenarioError, match="backend 'caikit' does not serve api 'tgis'"):
        parse_scenario(_scenario({"backend": "caikit"}, "tgis"))
    with pytest.raises(ScenarioError, match="backend 'tgis' does not serve api 'caikit-grpc'"):
        parse_scenario(_scenario({"backend": "tgis"}, "caikit-grpc"))


def test_missing_interpreters_fail_before_anything_starts(tmp_path: Path) -> None:
    cell = _cell("caikit", {}, python=str(tmp_path / "no" / "python"))
    with ProcessRegistry() as registry:
        backend = CaikitBackend(home=HOME, registry=registry, tgis_python=tmp_path / "no-tgis")
        with pytest.raises(BackendStartError, match="tokenbench setup caikit"):
            backend.start(cell, tmp_path / "cell")
        backend = CaikitBackend(home=HOME, registry=registry, tgis_python=tmp_path / "no-tgis")
        with pytest.raises(BackendStartError, match="tokenbench setup tgis"):
            backend.start(_cell("caikit", {}, python="/bin/sh"), tmp_path / "cell2")
        assert registry.groups == frozenset()
        backend.stop()  # idempotent after a failed start
