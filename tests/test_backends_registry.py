"""Backends as registered specs: the registry, value checks of each backend's Settings (a table of
bad values -> a message naming field and value), the protocol cross-check, environment derivation
from a scenario, concurrency caps, and a backend added with one module plus one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.assets import required_environments
from harness.backends import registry
from harness.backends.base import ServerHandle
from harness.backends.vllm import ENV_SETTINGS, FLAG_SETTINGS
from harness.backends.vllm_settings import VllmSettings
from harness.cellrun import exceeds_cap
from harness.results import StepMetrics
from harness.run import validate_cells
from harness.scenario import ScenarioError, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[1]


def scenario(server: dict, api: str = "completions") -> dict:
    return {
        "name": "t",
        "servers": [{"name": "a", "model": "m", **server}],
        "workload": {"api": api, "prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]},
                     "duration_s": 1},
    }  # fmt: skip


@pytest.fixture()
def echo_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(registry.BACKEND_MODULES, "echo", "fake_backend")  # the one registration line
    registry.get_spec.cache_clear()
    yield
    registry.get_spec.cache_clear()


def test_every_registered_backend_has_a_spec_of_its_name() -> None:
    assert registry.backend_names() == ("vllm", "external", "sim", "tgis", "caikit", "kserve", "tgi")
    for spec in registry.all_specs():
        assert spec.name in registry.backend_names() and spec.label
    assert registry.get_spec("sim").simulated and not registry.get_spec("vllm").simulated


def test_unknown_backend_fails_at_validate_naming_the_known_ones() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(scenario({"backend": "vlm"}), "s.yaml")
    text = str(info.value)
    assert "s.yaml" in text and "servers[0].backend" in text and "'vlm'" in text
    assert "known: vllm, external, sim" in text


def test_vllm_settings_model_covers_the_flag_table() -> None:
    assert set(VllmSettings.model_fields) == set(FLAG_SETTINGS) | set(ENV_SETTINGS)


BAD_VALUES = [
    ("vllm", "max_num_seqs", -4, "settings.max_num_seqs: must be >= 1, got -4"),
    ("vllm", "max_num_seqs", 4.5, "settings.max_num_seqs: expected int, got 4.5"),
    ("vllm", "quantization", "fp9", "settings.quantization: 'fp9' is not one of"),
    ("vllm", "dtype", "bf17", "settings.dtype: 'bf17' is not one of auto, bfloat16"),
    ("vllm", "kv_cache_dtype", "fp7", "settings.kv_cache_dtype: 'fp7' is not one of"),
    ("vllm", "gpu_memory_utilization", 1.5, "settings.gpu_memory_utilization: must be <= 1, got 1.5"),
    ("vllm", "gpu_memory_utilization", 0, "settings.gpu_memory_utilization: must be > 0, got 0"),
    ("vllm", "enforce_eager", "yes", "settings.enforce_eager: expected bool, got 'yes'"),
    ("vllm", "cpu_kvcache_space_gib", -1, "settings.cpu_kvcache_space_gib: must be > 0, got -1"),
    ("vllm", "distributed_executor_backend", "mpi", "'mpi' is not one of ray, mp, uni"),
    ("vllm", "max_num_seqz", 4, "unknown vLLM setting 'max_num_seqz'"),
    ("sim", "ttft_ms", -3, "settings.ttft_ms: must be >= 0, got -3"),
    ("sim", "mode", "warp", "settings.mode: 'warp' is not one of exact, engine"),
    ("external", "max_num_seqs", 4, "backend 'external' cannot apply settings (max_num_seqs)"),
]


@pytest.mark.parametrize(("backend", "key", "value", "message"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_setting_values_fail_at_validate_naming_field_and_value(
    backend: str, key: str, value: object, message: str
) -> None:
    extra = {"base_url": "http://127.0.0.1:1"} if backend == "external" else {}
    sc = parse_scenario(scenario({"backend": backend, **extra, "settings": {key: [value]}}))
    with pytest.raises(ScenarioError) as info:
        validate_cells(sc)
    text = str(info.value)
    assert message in text
    assert "server 'a'" in text and "(cell '" in text


def test_each_value_of_a_sweep_list_is_checked() -> None:
    sc = parse_scenario(scenario({"backend": "vllm", "settings": {"max_num_seqs": [4, -2, 16]}}))
    with pytest.raises(ScenarioError) as info:
        validate_cells(sc)
    text = str(info.value)
    assert "got -2" in text and "got 4" not in text and "got 16" not in text
    assert validate_cells(parse_scenario(scenario({"backend": "vllm", "settings": {"dtype": ["float32", "bfloat16"],
        "quantization": [None, "fp8_per_channel"]}})))  # fmt: skip


def test_protocol_must_be_one_the_backend_serves() -> None:
    with pytest.raises(ScenarioError, match="backend 'vllm' does not serve api 'tgis'"):
        parse_scenario(scenario({"backend": "vllm"}, api="tgis"))
    with pytest.raises(
        ScenarioError, match=r"backend 'vllm' does not serve api 'tgi' \(it serves: completions"
    ):
        parse_scenario(scenario({"backend": "vllm", "api": "tgi"}))
    parse_scenario(scenario({"backend": "sim"}, api="tgis"))
    parse_scenario(scenario({"backend": "external", "base_url": "http://127.0.0.1:1"}, api="tgi"))


def test_environments_are_derived_from_the_scenario(tmp_path: Path) -> None:
    quick = load_scenario(REPO / "scenarios" / "quickstart-cpu.yaml")
    assert required_environments(quick, tmp_path) == ["vllm-cpu"]  # no GPU on this machine
    assert required_environments(load_scenario(REPO / "scenarios" / "ci-sim.yaml"), tmp_path) == []
    gpu = parse_scenario(scenario({"backend": "vllm", "python": str(tmp_path / "venvs/vllm-gpu/bin/python")}))
    assert required_environments(gpu, tmp_path) == ["vllm-gpu"]
    foreign = parse_scenario(scenario({"backend": "vllm", "python": "/opt/my-vllm/bin/python"}))
    assert required_environments(foreign, tmp_path) == []
    two = parse_scenario({**scenario({"backend": "vllm"}), "servers": [
        {"name": "a", "backend": "vllm", "model": "m"}, {"name": "b", "backend": "vllm", "model": "m"},
        {"name": "c", "backend": "sim", "model": "m"}]})  # fmt: skip
    assert required_environments(two, tmp_path) == ["vllm-cpu"]


def test_setup_for_a_scenario_without_backend_envs_builds_nothing(tmp_path: Path) -> None:
    from cli_runner import tokenbench

    home = tmp_path / "home"
    env = {"TOKENBENCH_HOME": str(home)}
    result = tokenbench("setup", "--for", REPO / "scenarios" / "ci-sim.yaml", cwd=tmp_path, extra_env=env)
    assert result.returncode == 0, result.stderr
    assert "no backend environment needed" in result.stdout
    assert not home.exists() and not (tmp_path / ".cache").exists()
    bad = tokenbench("setup", "vllm-tpu", cwd=tmp_path)
    assert bad.returncode == 2 and "known: vllm-cpu, vllm-gpu, tgis, caikit" in bad.stdout + bad.stderr


def test_a_backend_is_one_module_plus_one_line(echo_registered: None) -> None:
    sc = parse_scenario(scenario({"backend": "echo", "settings": {"pool_size": [2, 8]}}, api="tgis"))
    cells = validate_cells(sc)
    spec = registry.get_spec("echo")
    assert spec.concurrency_cap(dict(cells[0].settings)) == (2, "pool_size")
    with pytest.raises(ScenarioError, match="settings.pool_size: must be >= 1, got 0"):
        validate_cells(
            parse_scenario(scenario({"backend": "echo", "settings": {"pool_size": 0}}, api="tgis"))
        )
    with pytest.raises(ScenarioError, match="does not serve api 'chat'"):
        parse_scenario(scenario({"backend": "echo"}, api="chat"))


def _step(kind: str, target: float, in_flight: float | None = None) -> StepMetrics:
    return StepMetrics(step_id="s", kind=kind, target=target, duration_s=1, requests_total=1, requests_ok=1,
                       requests_warmup=0, mean_in_flight=in_flight)  # type: ignore[arg-type]  # fmt: skip


def test_steps_over_the_concurrency_cap_are_flagged() -> None:
    assert exceeds_cap(_step("concurrency", 8), 5) and not exceeds_cap(_step("concurrency", 5), 5)
    assert exceeds_cap(_step("rate", 4, in_flight=6.2), 5) and not exceeds_cap(_step("rate", 4, 3.0), 5)
    assert not exceeds_cap(_step("concurrency", 64), None)


def test_handle_trees_keep_single_process_pid() -> None:
    def handle(**kw: object) -> ServerHandle:
        return ServerHandle(base_url="http://x", served_model="m", command=[], env={}, version=None,
                            launch_s=None, log_path=None, metrics_url=None, **kw)  # type: ignore[arg-type]  # fmt: skip

    assert handle(pid=7).trees() == {"server": 7}
    assert handle(pid=None).trees() == {}
    two = handle(pid=7, processes={"tgis": 7, "caikit": 9})
    assert two.trees() == {"tgis": 7, "caikit": 9} and two.public_dict()["processes"] == {
        "tgis": 7,
        "caikit": 9,
    }
    assert two.public_dict()["pid"] == 7
