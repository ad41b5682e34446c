"""The compare page in headless Chromium: it loads offline and every figure is in the rendered DOM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from gate_synth import write_run
from harness.gate.compare_report import write_compare
from harness.gate.comparison import compare_runs
from harness.gate.rundata import load_run_folder

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make browser)"),
]


def _chromium(args: list[str], profile: Path, timeout: float = 60) -> str:
    """Run headless Chromium in its own process group; the whole group is killed on timeout or error."""
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing off the page can load
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_compare_page_renders_offline(tmp_path: Path) -> None:
    runs = [
        load_run_folder(write_run(tmp_path / "a", seed=1)),
        load_run_folder(write_run(tmp_path / "b", seed=2, itl_ms=11.5)),
    ]
    html_path, _ = write_compare(compare_runs(runs, resamples=500), tmp_path / "cmp")
    dom = _chromium(["--dump-dom", html_path.as_uri()], tmp_path / "profile")
    assert "<h1>tokenbench compare</h1>" in dom
    assert dom.count("<svg") == 2
    assert dom.count("<figure") == 2
    assert "tpot_p50" in dom
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,1600", html_path.as_uri()], tmp_path / "profile2")
    assert shot.is_file() and shot.stat().st_size > 20_000
