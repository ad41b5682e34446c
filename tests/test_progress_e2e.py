"""Live progress end to end: the real CLI against the sim backend, under a pseudo-terminal and through a pipe.

What these prove: the counts travel from Locust (its single process, or its
workers through the master) to the orchestrator *while the step runs*: updates
with growing request counts appear before the step's result line, not only at
its end. What they don't: how a real terminal draws the panel (``script``
records the escape codes; the test reads the text between them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_runner import REPO, tokenbench

STEP_S = 7


def _scenario(tmp: Path, processes: int, duration_s: float = STEP_S) -> Path:
    data = {
        "name": "live",
        "seed": 3,
        "servers": [{"name": "a", "backend": "sim", "model": "m", "settings": {"ttft_ms": 20, "itl_ms": 5}}],
        "workload": {
            "prompt_tokens": 8,
            "output_tokens": 16,
            "steps": {"concurrency": [4]},
            "duration_s": duration_s,
            "timeout_s": 10,
            "processes": processes,
        },
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _under_pty(tmp: Path, *args: str) -> str:
    """Run the CLI under ``script`` (a pseudo-terminal) and return what it drew, escape codes removed."""
    typescript = tmp / "typescript"
    cmd = " ".join([sys.executable, "-m", "harness.cli", *args])
    env = {"PYTHONPATH": str(REPO), "COLUMNS": "120", "LINES": "40", "PATH": "/usr/bin:/bin", "TERM": "xterm"}
    done = subprocess.run(
        ["script", "-qec", cmd, str(typescript)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    raw = typescript.read_bytes().decode("utf-8", "replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)


needs_script = pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")


@needs_script
def test_terminal_shows_live_updates_during_the_step(tmp_path: Path) -> None:
    text = _under_pty(tmp_path, "run", str(_scenario(tmp_path, processes=1)), "--out", str(tmp_path / "out"))
    end = re.search(r"\[a\] c4: (\d+)/(\d+) ok", text)
    assert end, text[-2000:]
    during = text[: end.start()]
    assert "[a] c4 running: concurrency 4" in during and "cell 1/1, step 1/1" in during
    updates = [(int(s), int(n)) for s, n in re.findall(rf"(\d+)/{STEP_S} s, (\d+) requests", during)]
    counts = sorted({n for _, n in updates if n > 0})
    assert len(counts) >= 2, updates  # at least two distinct updates with data, before the step ended
    assert counts[-1] <= int(end.group(2))
    assert re.search(r"TTFT p50 \d+\.\d ms, TPOT p50 \d+\.\d ms", during)
    assert "ETA " in during and ("harness  ok" in during or "harness  LIMITED" in during)


@needs_script
def test_quiet_shows_no_live_progress(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, processes=1, duration_s=3)
    text = _under_pty(tmp_path, "run", str(scenario), "--out", str(tmp_path / "out"), "--quiet")
    assert re.search(r"\[a\] c4: \d+/\d+ ok", text), text[-2000:]
    assert "running" not in text and "requests" not in text.split("[a] c4:")[0]


def test_without_a_terminal_plain_lines_come_during_the_step_from_every_worker(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = tokenbench(
        "run", _scenario(tmp_path, processes=2), "--out", out, "--progress-every", "2", timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if re.match(r"\[a\] c4: \d+/\d+ ok", line))
    running = [line for line in lines[:end] if line.startswith("[a] c4 running (cell 1/1, step 1/1): ")]
    assert running, done.stdout
    counts = [int(m.group(1)) for line in running if (m := re.search(r"s, (\d+) requests", line))]
    assert counts and max(counts) > 0, running
    assert counts == sorted(counts)
    assert any(re.search(r"TTFT p50 \d+\.\d ms", line) for line in running)
    assert all("run ETA" in line and "errors none" in line for line in running)
    # the channel is a display aid, not a result: nothing of it stays in the step folder
    (step_dir,) = out.glob("*-live/cells/*/steps/c4")
    assert not list(step_dir.glob("*progress.json*"))
