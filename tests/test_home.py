"""TOKENBENCH_HOME: where caches live (harness.home), and that the CLI and make targets use it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli_runner import REPO, tokenbench
from harness.home import DEFAULT_HOME, models_dir, resolve_relative, tokenbench_home, venvs_dir


def test_home_defaults_to_the_user_cache_and_takes_the_variable(tmp_path: Path) -> None:
    assert tokenbench_home({}) == DEFAULT_HOME.expanduser().absolute()
    assert str(tokenbench_home({})).endswith(".cache/tokenbench")
    assert tokenbench_home({"TOKENBENCH_HOME": "  "}) == DEFAULT_HOME.expanduser().absolute()
    assert tokenbench_home({"TOKENBENCH_HOME": str(tmp_path)}) == tmp_path
    assert tokenbench_home({"TOKENBENCH_HOME": "rel"}) == Path.cwd() / "rel"  # absolute, fixed at the start
    assert venvs_dir(tmp_path) == tmp_path / "venvs" and models_dir(tmp_path) == tmp_path / "models"


def test_relative_paths_resolve_against_cwd_then_home(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "data").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    assert resolve_relative("data", home) == home / "data"
    (work / "data").mkdir()
    assert resolve_relative("data", home) == work / "data"
    assert resolve_relative("/abs/x", home) == Path("/abs/x")


def test_make_model_default_goes_under_the_home(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    res = tokenbench("make-model", cwd=work, extra_env={"TOKENBENCH_HOME": str(home)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"model: {home / 'models' / 'tiny-llama'}" in res.stdout
    assert (home / "models" / "tiny-llama" / "config.json").is_file() and list(work.iterdir()) == []


def test_make_sets_the_home_to_the_checkouts_cache() -> None:
    """`make` exports TOKENBENCH_HOME=$(CURDIR)/.cache to every recipe, so targets find earlier builds."""
    probe = "print-home: ; @sh -c 'echo $$TOKENBENCH_HOME'"
    res = subprocess.run(
        ["make", "--no-print-directory", f"--eval={probe}", "print-home"], cwd=REPO,
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{REPO}/.cache"


def test_relative_model_and_tokenizer_paths_resolve_against_cwd_then_home(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from harness.assets import resolve_server
    from harness.scenario import Server

    home, work = tmp_path / "home", tmp_path / "work"
    (home / "models" / "m").mkdir(parents=True)
    (home / "models" / "m" / "tokenizer.json").write_text("{}")
    work.mkdir()
    monkeypatch.chdir(work)
    server = Server(name="s", backend="vllm", model="models/m", tokenizer="models/m")
    resolved = resolve_server(server, home, print)
    assert resolved.model == str(home / "models" / "m") and resolved.tokenizer == str(home / "models" / "m")
    hub = Server(name="s", backend="vllm", model="org/model")
    assert resolve_server(hub, home, print) is hub  # not a path anywhere: a hub id, untouched
    (work / "models" / "m").mkdir(parents=True)
    assert resolve_server(server, home, print).model == str(work / "models" / "m")  # cwd first
