"""User YAML that would crash, hang or blow up memory fails fast, briefly, naming the file."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cli_runner import tokenbench
from harness.scenario import ScenarioError, apply_overrides
from harness.yamlfile import MAX_VALUES, expanded_size, read_yaml

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
       f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
       for i in range(8)]
)  # fmt: skip

SCENARIO = """
name: aliases
engine: &engine {max_num_seqs: 4}
servers:
  - {name: a, backend: sim, model: m, settings: *engine}
  - {name: b, backend: sim, model: m, settings: *engine}
workload: {prompt_tokens: 4, output_tokens: 4, steps: {concurrency: [1]}, requests: 1}
"""


def test_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 2000
    started = time.monotonic()
    with pytest.raises(ScenarioError) as err:
        read_yaml(path, ScenarioError, "scenario file")
    assert time.monotonic() - started < 2.0
    assert str(path) in str(err.value) and "expands to more than" in str(err.value)
    assert len(str(err.value)) < 400


def test_expanded_size_stops_counting_past_the_limit() -> None:
    shared = list(range(1000))
    assert expanded_size({"a": shared, "b": shared}, 10**6) == 1 + 2 + 2 * 1001
    assert expanded_size([shared] * 10**6, 50) == 51


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"name: x\x00\x01\x02", "NUL byte at offset 7"),
        ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 9)"),
        (b"name: [unclosed\n", "not valid YAML"),
    ],
)
def test_binary_latin1_and_broken_files_name_the_file(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ScenarioError, match=re.escape(needle)) as err:
        read_yaml(path, ScenarioError, "scenario file")
    assert str(err.value).startswith(str(path))


def test_binary_scenario_through_the_cli_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes(range(256)))
    out = tokenbench("validate", path)
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr and str(path) in out.stdout


def test_set_on_an_aliased_mapping_changes_only_that_server(tmp_path: Path) -> None:
    path = tmp_path / "aliased.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    data = read_yaml(path, ScenarioError, "scenario file")
    data.pop("engine")
    changed = apply_overrides(data, ["servers.0.settings.max_num_seqs=9"])
    assert changed["servers"][0]["settings"] == {"max_num_seqs": 9}
    assert changed["servers"][1]["settings"] == {"max_num_seqs": 4}


def test_bad_yaml_in_a_set_value_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match=r"--set 'workload.duration_s=\[1,': not valid YAML"):
        apply_overrides({"workload": {}}, ["workload.duration_s=[1,"])


def test_limit_is_generous_for_real_scenarios() -> None:
    assert MAX_VALUES >= 100_000


def test_validate_prints_every_cell_identity_even_ones_that_look_like_markup(tmp_path: Path) -> None:
    from harness.matrix import expand_cells
    from harness.scenario import load_scenario

    path = tmp_path / "many.yaml"
    text = SCENARIO.replace("engine: &engine {max_num_seqs: 4}\n", "")
    path.write_text(text.replace("*engine", "{ttft_ms: [1, 2, 3, 4, 5, 6, 7, 8]}"), encoding="utf-8")
    identities = {c.identity for c in expand_cells(load_scenario(path))}
    assert any(i[0] in "abcdef" for i in identities)  # rich would read "[ca26...]" as a style tag
    out = tokenbench("validate", path)
    assert out.returncode == 0, out.stdout + out.stderr
    for identity in identities:
        assert f"[{identity}]" in out.stdout
