"""The GPU check's own logic, here where there is no GPU.

What this proves: the check skips plainly without a GPU (the real no-GPU
path of this machine), drives a two-process tree through its phases and
leaves nothing running (with a torch double in the child), and its verdicts
are right on synthesised samples: a faithful NVML passes, a misattributed,
slow or wrong one fails with the figure named. What it cannot prove: that a
real driver behaves; only ``python -m harness.telemetry.gpucheck`` on a GPU
machine says that.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from harness.telemetry import gpucheck
from harness.telemetry.gpu import GpuProbe

MIB = 2**20
S = 1_000_000_000
# A stand-in for torch in the child: enough of torch.cuda for the CHILD script, no GPU.
FAKE_TORCH = """
import os
uint8 = "uint8"
class device:
    def __init__(self, name): self.name = name
class _T:
    def zero_(self): return self
def empty(n, dtype=None, device=None): return _T()
class cuda:
    @staticmethod
    def synchronize(): pass
    @staticmethod
    def empty_cache(): pass
    @staticmethod
    def memory_reserved(dev=None): return 0
    @staticmethod
    def is_available(): return True
"""


def _args(**over: object) -> argparse.Namespace:
    base = {
        "python": sys.executable,
        "steps": "0,1,2,4",
        "hold_s": 2.0,
        "interval_s": 0.25,
        "tolerance_mib": 32.0,
        "timeout_s": 60.0,
    }
    base.update(over)
    return argparse.Namespace(**base)


def _synthetic(
    *, attributed: bool = True, period_s: float = 0.25, proc_extra_mib: float = 0.0
) -> tuple[list[dict], list[gpucheck.Phase]]:
    """Rows as the sampler writes them for a faithful (or not) NVML: 8 samples per 2 s hold."""
    rows: list[dict] = []
    phases: list[gpucheck.Phase] = []
    plan = [("baseline", 0), ("alloc-1GiB", 1024), ("alloc-2GiB", 2048), ("alloc-4GiB", 4096), ("freed", 0)]
    t = 10 * S
    step = int(period_s * S)
    for name, alloc in plan:
        phases.append(gpucheck.Phase(name, alloc * MIB, t, alloc * MIB))
        for _ in range(int(2.0 / period_s)):
            proc = 500 + alloc + (proc_extra_mib if alloc else 0.0)
            base = {"cell_id": "gpucheck", "step_id": name, "t_ns": t, "source": "gpu", "labels": "gpu=0"}
            rows.append({**base, "name": "gpu_used_bytes", "value": (1500 + alloc) * MIB})
            if attributed:
                rows.append({**base, "name": "gpu_proc_used_bytes", "value": proc * MIB})
            t += step
        # a transition sample, tagged with no phase
        rows.append({"cell_id": "gpucheck", "step_id": None, "t_ns": t, "source": "gpu", "name": "gpu_used_bytes", "value": 1500 * MIB, "labels": "gpu=0"})  # fmt: skip
        t += step
    return rows, phases


def test_skips_plainly_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    if GpuProbe().present:
        pytest.skip("this machine has a GPU: run the check itself")
    assert gpucheck.main([]) == 0
    assert gpucheck.main(["--require-gpu"]) == 3
    out = capsys.readouterr().out
    assert out.count("SKIPPED: no NVIDIA GPU here") == 2 and "PASS" not in out


def test_without_pynvml_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    assert gpucheck.main([]) == 2
    assert "nvidia-ml-py" in capsys.readouterr().out


def test_faithful_nvml_passes_with_the_report_figures(capsys: pytest.CaptureFixture[str]) -> None:
    rows, phases = _synthetic()
    out = gpucheck.Outcome()
    gpucheck._analyse(rows, phases, _args(), out)
    assert out.ok, out.failures
    report = out.figures["report"]
    assert report["peak_vram_mb"] == 1500 + 4096 and report["gpu_source"] == "nvml"
    # the median over the three alloc holds (8 samples each) is the 2 GiB hold's value
    assert report["steady_vram_mb"] == 1500 + 2048
    assert out.figures["sample_rate_hz"] == pytest.approx(4.0)
    text = capsys.readouterr().out
    assert "peak - baseline 4096 MiB (want 4096)" in text and "steady - baseline 2048 MiB (want 2048)" in text


def test_memory_not_attributed_to_the_tree_fails() -> None:
    rows, phases = _synthetic(attributed=False)
    out = gpucheck.Outcome()
    gpucheck._analyse(rows, phases, _args(), out)
    assert not out.ok and "no NVML memory attributed to the tree" in out.failures[0]


def test_wrong_per_process_figure_and_slow_sampler_fail() -> None:
    rows, phases = _synthetic(proc_extra_mib=100.0)
    out = gpucheck.Outcome()
    gpucheck._analyse(rows, phases, _args(), out)
    assert not out.ok and any("alloc-1GiB: NVML's tree memory" in f for f in out.failures)
    rows, phases = _synthetic(period_s=0.5)
    out = gpucheck.Outcome()
    gpucheck._analyse(rows, phases, _args(), out)
    assert any("sample rate 2.00 Hz is below 4 Hz" in f for f in out.failures)


def test_drive_runs_the_phases_over_a_tree_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "torch.py").write_text(textwrap.dedent(FAKE_TORCH))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rows, phases, diag = gpucheck._drive(_args(hold_s=0.6, steps="0,1,2"))
    assert diag["child_exit"] == 0, diag["child_stderr_tail"]
    assert [p.name for p in phases] == ["baseline", "alloc-1GiB", "alloc-2GiB", "freed"]
    assert [p.allocated_bytes for p in phases] == [0, 1 << 30, 2 << 30, 0]
    assert len(diag["tree_pids_at_peak"]) == 2  # the launcher and the allocating child
    counts = [r["value"] for r in rows if r["name"] == "num_processes"]
    assert counts and max(counts) == 2.0  # the sampler walked the tree from the launcher's pid
    tagged = {r["step_id"] for r in rows if r["source"] == "process"}
    assert {"baseline", "alloc-1GiB", "alloc-2GiB", "freed"} <= tagged
    assert (
        not psutil.pid_exists(diag["launcher_pid"])
        or psutil.Process(diag["launcher_pid"]).status() == "zombie"
    )
