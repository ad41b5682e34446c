"""``--resume`` re-reads a redacted scenario.yaml: secrets come back from the environment or ``--set``,
and a missing one is a clear error, never a request or a launch with the literal ``REDACTED``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_runner import tokenbench
from harness.matrix import expand_cells
from harness.resume import load_resume_scenario
from harness.runsecrets import Redactor
from harness.scenario import ScenarioError, parse_scenario

WORKLOAD = {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 2}
ARGS = ["--api-key", "resume-arg-secret-1", "--max-num-seqs", "4"]


def _run_folder(tmp_path: Path, server: dict) -> tuple[Path, object]:
    """A run folder whose scenario.yaml was written as a run writes it (redacted)."""
    scenario = parse_scenario({"name": "r", "servers": [server], "workload": WORKLOAD})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(
        Redactor.for_scenario(scenario, environ={}).scenario_yaml(scenario)
    )
    (run_dir / "summary.json").write_text(json.dumps({"run_id": "r"}))
    return run_dir, scenario


SIM = {"name": "s", "backend": "sim", "model": "m", "env": {"HF_TOKEN": "resume-env-secret-2"}, "args": ARGS}


def test_secrets_come_back_from_the_environment_and_set(tmp_path: Path) -> None:
    run_dir, original = _run_folder(tmp_path, SIM)
    assert "resume-" not in (run_dir / "scenario.yaml").read_text()
    restored = load_resume_scenario(
        run_dir, ["servers.0.args.1=resume-arg-secret-1"], environ={"HF_TOKEN": "resume-env-secret-2"}
    )
    assert restored.servers[0].env == {"HF_TOKEN": "resume-env-secret-2"}
    assert restored.servers[0].args == ARGS
    # the same cells as the run that was interrupted: its summary's identities still match
    assert [c.identity for c in expand_cells(restored)] == [c.identity for c in expand_cells(original)]


def test_a_missing_secret_is_an_error_naming_the_field_and_how_to_give_it(tmp_path: Path) -> None:
    run_dir, _ = _run_folder(tmp_path, SIM)
    with pytest.raises(ScenarioError) as err:
        load_resume_scenario(run_dir, [], environ={})
    message = str(err.value)
    assert "cannot resume: a secret is missing" in message
    assert "servers[0].env.HF_TOKEN" in message and "export HF_TOKEN" in message
    assert "servers.0.args.1=VALUE" in message
    assert "resume-" not in message


def test_url_credentials_and_the_api_key_variable_are_asked_for(tmp_path: Path) -> None:
    server = {"name": "e", "backend": "external", "model": "m", "base_url": "http://u:resume-pw-3@h:1/v1",
              "api_key_env": "TB_RESUME_KEY_UNSET"}  # fmt: skip
    run_dir, _ = _run_folder(tmp_path, server)
    stored = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    assert stored["servers"][0]["base_url"] == "http://REDACTED@h:1/v1"
    with pytest.raises(ScenarioError) as err:
        load_resume_scenario(run_dir, [], environ={})
    assert "servers.0.base_url=VALUE" in str(err.value) and "TB_RESUME_KEY_UNSET" in str(err.value)
    restored = load_resume_scenario(
        run_dir,
        ["servers.0.base_url=http://u:resume-pw-3@h:1/v1"],
        environ={"TB_RESUME_KEY_UNSET": "k-123456"},
    )
    assert restored.servers[0].base_url == "http://u:resume-pw-3@h:1/v1"


def test_cli_resume_without_the_secret_exits_2_with_the_message(tmp_path: Path) -> None:
    run_dir, _ = _run_folder(tmp_path, SIM)
    proc = tokenbench("run", "--resume", run_dir, extra_env={"HF_TOKEN": ""}, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "a secret is missing" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert "servers.0.args.1=VALUE" in proc.stdout
