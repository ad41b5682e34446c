"""Scenario validation: bad input fails before anything starts, naming file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.scenario import ScenarioError, apply_overrides, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {
        "name": "t",
        "servers": [{"name": "a", "backend": "vllm", "model": "m", "settings": {"max_num_seqs": [4, 16]}}],
        "workload": {
            "prompt_tokens": 32,
            "output_tokens": 16,
            "steps": {"concurrency": [1]},
            "duration_s": 5,
        },
    }


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.servers


def test_fixed_length_shorthand() -> None:
    sc = parse_scenario(base())
    assert sc.workload.prompt_tokens.dist == "fixed" and sc.workload.prompt_tokens.value == 32


def test_unknown_key_names_file_field_and_value(tmp_path: Path) -> None:
    data = base()
    data["workload"]["colour"] = "blue"
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, data))
    msg = str(e.value)
    assert "s.yaml" in msg and "workload.colour" in msg and "unknown key" in msg and "'blue'" in msg


def test_negative_rate_rejected(tmp_path: Path) -> None:
    data = base()
    data["workload"]["steps"] = {"rate": [2, -1]}
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, data))
    assert "workload.steps.rate[1]" in str(e.value) and "-1" in str(e.value)


def test_wrong_type_rejected() -> None:
    data = base()
    data["workload"]["duration_s"] = "long"
    with pytest.raises(ScenarioError, match=r"workload.duration_s.*'long'"):
        parse_scenario(data, "x.yaml")


def test_output_longer_than_context_rejected() -> None:
    data = base()
    data["servers"][0]["settings"]["max_model_len"] = [64, 40]
    with pytest.raises(ScenarioError, match=r"exceeds max_model_len 40"):
        parse_scenario(data)


def test_needs_exactly_one_stop_rule() -> None:
    data = base()
    data["workload"]["requests"] = 10
    with pytest.raises(ScenarioError, match="exactly one of 'duration_s' or 'requests'"):
        parse_scenario(data)


def test_external_needs_base_url_and_key_env_only_for_external() -> None:
    data = base()
    data["servers"][0] = {"name": "e", "backend": "external", "model": "m"}
    with pytest.raises(ScenarioError, match="needs 'base_url'"):
        parse_scenario(data)
    data["servers"][0] = {"name": "v", "backend": "vllm", "model": "m", "api_key_env": "K"}
    with pytest.raises(ScenarioError, match="only for backend 'external'"):
        parse_scenario(data)


def test_uniform_min_above_max_rejected() -> None:
    data = base()
    data["workload"]["prompt_tokens"] = {"dist": "uniform", "min": 10, "max": 5}
    with pytest.raises(ScenarioError, match=r"workload.prompt_tokens.*min \(10\) is greater than max \(5\)"):
        parse_scenario(data)


def test_duplicate_server_names_rejected() -> None:
    data = base()
    data["servers"].append(dict(data["servers"][0]))
    with pytest.raises(ScenarioError, match="repeated"):
        parse_scenario(data)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="bad.yaml: not valid YAML"):
        load_scenario(bad)


def test_overrides_apply_yaml_values(tmp_path: Path) -> None:
    p = write(tmp_path, base())
    sc = load_scenario(p, ["workload.duration_s=2.5", "servers.0.settings.max_num_seqs=[1,2,3]"])
    assert sc.workload.duration_s == 2.5
    assert sc.servers[0].settings["max_num_seqs"] == [1, 2, 3]


def test_override_errors_are_clear() -> None:
    with pytest.raises(ScenarioError, match="expected path=value"):
        apply_overrides(base(), ["workload.duration_s"])
    with pytest.raises(ScenarioError, match="servers.5 is not a valid list index"):
        apply_overrides(base(), ["servers.5.name=x"])


def test_unknown_local_model_fails_validation() -> None:
    from harness.run import validate_cells

    data = base()
    data["servers"][0]["model"] = "tokenbench:huge-llama"
    with pytest.raises(
        ScenarioError, match=r"server 'a': model 'tokenbench:huge-llama' is not a known local model"
    ):
        validate_cells(parse_scenario(data))


def test_unknown_vllm_setting_fails_validation() -> None:
    from harness.run import validate_cells

    data = base()
    data["servers"][0]["settings"]["max_num_seqz"] = 4
    with pytest.raises(ScenarioError, match="max_num_seqz"):
        validate_cells(parse_scenario(data))


def test_dataset_relative_to_scenario_and_must_exist(tmp_path: Path) -> None:
    data = base()
    del data["workload"]["prompt_tokens"]
    data["workload"]["dataset"] = "prompts.jsonl"
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError, match=r"workload.dataset: no such file .*prompts.jsonl"):
        load_scenario(path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hello world"}\n')
    assert load_scenario(path).workload.dataset == tmp_path / "prompts.jsonl"


def test_prompt_source_required_and_exclusive() -> None:
    data = base()
    del data["workload"]["prompt_tokens"]
    with pytest.raises(ScenarioError, match="give 'prompt_tokens'"):
        parse_scenario(data)
    data["workload"]["prompt_tokens"] = 4
    data["workload"]["dataset"] = "x.jsonl"
    with pytest.raises(ScenarioError, match="not both"):
        parse_scenario(data)


def test_engine_mode_scenario_takes_a_length_dataset(tmp_path: Path) -> None:
    """Issue 12: a what-if scenario replays a recorded length distribution, checked at validate."""
    from harness.hardware.sharegpt_lengths import SAMPLE_FILE

    data = base()
    data["servers"] = [
        {
            "name": "h100",
            "backend": "sim",
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "settings": {
                "mode": "engine",
                "gpu": "h100-80gb",
                "max_model_len": 2048,
                "pipeline_parallel_size": 2,
            },
        }
    ]
    del data["workload"]["prompt_tokens"]
    data["workload"]["dataset"] = str(SAMPLE_FILE)
    assert load_scenario(write(tmp_path, data)).workload.dataset == SAMPLE_FILE
    bad = tmp_path / "lengths.jsonl"
    bad.write_text('{"prompt_tokens": 12, "output_tokens": 3}\n{"prompt_tokens": 12}\n')
    data["workload"]["dataset"] = "lengths.jsonl"
    with pytest.raises(ScenarioError, match=r"workload.dataset: .*lengths.jsonl:2: output_tokens"):
        load_scenario(write(tmp_path, data))
