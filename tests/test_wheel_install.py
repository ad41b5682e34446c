"""Installed anywhere: build the wheel, install it into a fresh venv, run tokenbench from an empty folder.

Marked ``wheel``: it installs every dependency from the package index into a new venv (about a minute
with pip's cache warm, more on a cold one). ``make test`` runs it; ``make test-fast`` skips it. What it
proves: the wheel carries its package data (locustfile, protos, templates, policies, profiles, the
summary schema), ``tokenbench`` works without the checkout on ``sys.path``, runs land in ./reports,
caches in TOKENBENCH_HOME (default ~/.cache/tokenbench), and baselines resolve against ./reports/baselines.
What it does not: real backends (those need their environments; see the ``vllm`` tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import __version__

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.wheel
SCENARIO = {
    "name": "wheel",
    "seed": 5,
    "servers": [
        {"name": "sim-a", "backend": "sim", "model": "sim-model", "settings": {"ttft_ms": 15, "itl_ms": 3}}
    ],
    "workload": {
        "api": "chat",
        "prompt_tokens": 8,
        "output_tokens": 8,
        "steps": {"concurrency": [2]},
        "requests": 40,
        "timeout_s": 20,
    },
}


def _sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    print("$", " ".join(map(str, cmd)), "->", res.returncode, "\n", res.stdout[-1500:], res.stderr[-1500:])
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "harness", src / "harness", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = _sh(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        timeout=300,
    )
    assert build.returncode == 0
    (wheel,) = (tmp / "dist").glob("tokenbench-*.whl")
    assert wheel.name.startswith(f"tokenbench-{__version__}-")
    _sh([sys.executable, "-m", "venv", str(tmp / "venv")], timeout=120).check_returncode()
    pip = _sh(
        [str(tmp / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=900
    )
    assert pip.returncode == 0
    return tmp / "venv" / "bin"


def _env(tmp: Path) -> dict[str, str]:
    """A bare environment: no PYTHONPATH (the checkout must not be importable), HOME in tmp."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp / "user"), "LANG": "C.UTF-8"}
    return {**env, **{k: os.environ[k] for k in ("TMPDIR",) if k in os.environ}}


def test_installed_tokenbench_runs_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    version = _sh([str(installed / "tokenbench"), "--version"], cwd=work, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"tokenbench {__version__}"
    where = _sh(
        [str(installed / "python"), "-c", "import harness; print(harness.__file__)"], cwd=work, env=env
    )
    assert "site-packages" in where.stdout and str(REPO) not in where.stdout

    (work / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    run = _sh([str(installed / "tokenbench"), "run", "s.yaml"], cwd=work, env=env, timeout=300)
    assert run.returncode == 0
    (run_dir,) = (work / "reports").glob("*-wheel")
    for name in (
        "report.html",
        "summary.json",
        "summary.md",
        "summary.csv",
        "records.csv",
        "records.parquet",
    ):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["harness_version"] == __version__ and summary["cells"][0]["status"] == "ok"
    assert summary["cells"][0]["steps"][0]["requests_ok"] == 40

    model = _sh([str(installed / "tokenbench"), "make-model"], cwd=work, env=env, timeout=300)
    home = tmp_path / "user" / ".cache" / "tokenbench"  # the default TOKENBENCH_HOME
    assert model.returncode == 0 and (home / "models" / "tiny-llama" / "config.json").is_file()

    save = _sh(
        [str(installed / "tokenbench"), "baseline", "save", str(run_dir), "--name", "w"], cwd=work, env=env
    )
    assert save.returncode == 0 and (work / "reports" / "baselines" / "w.json").is_file()
    gate = _sh(
        [str(installed / "tokenbench"), "gate", "--baseline", "w", "--run", str(run_dir), "--allow-env-mismatch"],
        cwd=work, env=env, timeout=120,
    )  # fmt: skip
    assert (
        gate.returncode in (0, 3) and (run_dir / "gate" / "gate.junit.xml").is_file()
    )  # 40 requests: tails thin
    assert "tokenbench gate:" in gate.stdout and "| Cell / step |" not in gate.stdout  # short verdict only
