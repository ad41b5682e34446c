"""The NVML path against a real GPU: known allocations, the harness's own sampler, its figures checked.

Why this exists: every other test of GPU telemetry runs against an NVML
double (``tests/fake_nvml.py``). This check runs only where an NVIDIA GPU and
driver are present, and tells whether the real thing does what the harness
assumes. Run it with one command on a GPU machine::

    python -m harness.telemetry.gpucheck          # or: make bench-gpu-mem

What it does:

1. Starts a process tree that the harness did not write: a launcher process
   whose child imports torch and allocates GPU memory in known steps,
   ``0 -> 1 -> 2 -> 4 GiB`` (``--steps``), holding each ``--hold-s`` seconds
   (2 s), then frees it all (``torch.cuda.empty_cache``) and holds again.
   The child says on stdout when each allocation is complete
   (``torch.cuda.synchronize``), and when it is about to change.
2. Samples that tree with the harness's real ``TelemetrySampler`` (real
   ``GpuProbe`` on pynvml, real ``ProcessTreeProbe``) at its default interval
   (0.25 s, 4 Hz), rooted at the *launcher's* pid, so the GPU memory must be
   found by walking the tree, as for vLLM's engine-core child.
3. Checks, and prints each figure against what is known:

   * sample rate: the mean rate over the child's lifetime must be >= 4 Hz,
     allowing 1% for the wake-up jitter of the sampler's last tick (it ticks on
     a fixed grid and never bursts), and no gap may exceed two intervals;
   * attribution: during every hold, NVML's memory of the tree's pids
     (``gpu_proc_used_bytes``) less the baseline hold (CUDA context only) equals
     the allocation within ``--tolerance-mib`` (32 MiB), in every sample; after
     the free it is back at the baseline. When NVML lists no pid of the tree
     (a container without the host's PID namespace), that is reported with
     the pids NVML did list;
   * the report's figures: ``memory_summary`` over the samples, with the
     allocation holds as the measured steps, gives peak and steady VRAM; the
     check prints them and requires peak - baseline = the largest allocation
     and steady - baseline = the median of the per-sample allocations, within
     the tolerance (device memory: another process on the same GPU would
     disturb these, so the device figures before the child started are printed).

Exit status: 0 all checks passed; 1 a check failed (each failure printed);
2 the check could not run (pynvml or torch missing, the child failed);
0 with a ``SKIPPED`` line when there is no NVIDIA GPU here (``--require-gpu``
makes that 3). ``--json PATH`` also writes every figure to a file.

What it needs besides the harness: ``torch`` with CUDA in the interpreter
that runs the child (``--python``, default this one), and for the harness
itself nvidia-ml-py, psutil, pandas, numpy, pydantic, httpx and
prometheus-client (pyarrow is not needed). Where there is no index to install
from, they travel as wheels (about 32 MB)::

    make gpucheck-wheels GPU_PY_VERSION=3.12   # here: .cache/gpucheck-wheels
    make bench-gpu-mem GPU_PYTHON=python3      # there, from the repository root

``bench-gpu-mem`` installs the wheels into ``.cache/gpucheck-venv``, a venv
that still sees ``GPU_PYTHON``'s torch, and runs the check with it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

GIB = 2**30
MIB = 2**20

# The allocating child. Prints "BEGIN <phase>" before a change and "PHASE <phase> <bytes reserved>" after it.
CHILD = r"""
import sys, time
import torch
steps = [float(x) for x in sys.argv[1].split(",")]
hold = float(sys.argv[2])
dev = torch.device("cuda:0")
warm = torch.empty(2 * 2**20, dtype=torch.uint8, device=dev).zero_()  # context and the zero kernel loaded
torch.cuda.synchronize()
del warm
torch.cuda.empty_cache()
torch.cuda.synchronize()
def say(*parts):
    print(*parts, flush=True)
say("PHASE baseline", torch.cuda.memory_reserved(dev))
time.sleep(hold)
held, have = [], 0
for gib in steps:
    want = int(gib * 2**30)
    if want <= have:
        continue
    name = f"alloc-{gib:g}GiB"
    say("BEGIN", name)
    held.append(torch.empty(want - have, dtype=torch.uint8, device=dev).zero_())
    torch.cuda.synchronize()
    have = want
    say("PHASE", name, torch.cuda.memory_reserved(dev))
    time.sleep(hold)
say("BEGIN freed")
held.clear()
torch.cuda.empty_cache()
torch.cuda.synchronize()
say("PHASE freed", torch.cuda.memory_reserved(dev))
time.sleep(hold)
say("DONE")
"""
# The tree's root: a process that only starts the allocating child, as vLLM's API server starts its engine.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@dataclass
class Phase:
    name: str
    allocated_bytes: int
    start_ns: int
    torch_reserved_bytes: int
    proc_mib: list[float] = field(default_factory=list)  # NVML, the tree's pids, summed over GPUs
    device_mib: list[float] = field(default_factory=list)  # NVML, device used, summed over GPUs


@dataclass
class Outcome:
    ok: bool = True
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.ok = False
        self.failures.append(message)


def _say(text: str) -> None:
    print(text, flush=True)


def _preflight(python: str) -> tuple[int | None, str]:
    """(exit status to stop with, or None to go on; message)."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return 2, "ERROR: pynvml (package nvidia-ml-py) is not installed; the harness's GPU probe needs it"
    from harness.telemetry.gpu import GpuProbe

    probe = GpuProbe()
    present = probe.present
    probe.close()
    if not present:
        return (
            0,
            "SKIPPED: no NVIDIA GPU here (NVML did not initialise or lists no device); nothing was checked",
        )
    probe_torch = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        done = subprocess.run([python, "-c", probe_torch], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 2, f"ERROR: cannot run {python}: {err}"
    if done.returncode != 0:
        why = "torch sees no CUDA device" if done.returncode == 3 else done.stderr.strip()[-400:]
        return 2, f"ERROR: {python} cannot allocate GPU memory with torch: {why}"
    return None, ""


def _device_used_mib() -> list[float]:
    import pynvml

    pynvml.nvmlInit()
    try:
        return [
            float(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used) / MIB
            for i in range(int(pynvml.nvmlDeviceGetCount()))
        ]
    finally:
        pynvml.nvmlShutdown()


def _nvml_processes() -> list[tuple[int, float]] | str:
    """(pid, MiB) of every compute process NVML lists, for the attribution diagnosis (or why not)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception as err:  # a diagnosis only: say why it is missing
        return f"NVML unavailable: {type(err).__name__}"
    try:
        out: list[tuple[int, float]] = []
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i)):
                out.append((int(p.pid), float(p.usedGpuMemory or 0) / MIB))
        return out
    finally:
        pynvml.nvmlShutdown()


def _tree_pids(root: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(root)
        return [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def _lines(stream: Any, sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _drive(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[Phase], dict[str, Any]]:
    """Run the child under the sampler; the rows, the phases and diagnostics."""
    from harness.telemetry.sampler import TelemetrySampler

    steps = [float(x) for x in args.steps.split(",")]
    peak_phase = f"alloc-{max(steps):g}GiB"
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTHONUNBUFFERED": "1"}
    cmd = [args.python, "-c", LAUNCHER, args.python, "-c", CHILD, args.steps, str(args.hold_s)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    sampler = TelemetrySampler(
        cell_id="gpucheck", server_pid=proc.pid, metrics_url=None, interval_s=args.interval_s
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    phases: list[Phase] = []
    diag: dict[str, Any] = {"launcher_pid": proc.pid}
    deadline = time.monotonic() + args.timeout_s
    try:
        sampler.start()
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the child ran past {args.timeout_s:g} s") from None
            parts = (line or "").split()
            if line is None or parts[:1] == ["DONE"]:
                sampler.set_step(None)
                break
            if parts[:1] == ["BEGIN"]:
                sampler.set_step(None)  # a change is under way: these samples belong to no phase
            elif parts[:1] == ["PHASE"] and len(parts) == 3:
                name = parts[1]
                allocated = (
                    int(float(name[len("alloc-") : -len("GiB")]) * GIB) if name.startswith("alloc-") else 0
                )
                phases.append(Phase(name, allocated, time.monotonic_ns(), int(parts[2])))
                sampler.set_step(name)
                if name == peak_phase:
                    diag["tree_pids_at_peak"] = _tree_pids(proc.pid)
                    diag["nvml_processes_at_peak"] = _nvml_processes()
        proc.wait(timeout=30)
    finally:
        rows = sampler.stop()
        if proc.poll() is None:  # timed out or interrupted: the check's processes do not outlive it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    diag["child_exit"] = proc.returncode
    diag["child_stderr_tail"] = (proc.stderr.read() if proc.stderr else "")[-2000:]
    return rows, phases, diag


def _per_phase(rows: list[dict[str, Any]], name: str, phases: dict[str, Phase]) -> dict[str, list[float]]:
    """MiB of one gpu metric per sample, summed over GPUs, by phase, in time order."""
    per_time: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["source"] == "gpu" and r["name"] == name and r["step_id"] in phases:
            key = (r["step_id"], r["t_ns"])
            per_time[key] = per_time.get(key, 0.0) + r["value"] / MIB
    out: dict[str, list[float]] = {p: [] for p in phases}
    for (step, _), value in sorted(per_time.items(), key=lambda kv: kv[0][1]):
        out[step].append(value)
    return out


def _check_rate(
    rows: list[dict[str, Any]], phases: list[Phase], args: argparse.Namespace, out: Outcome
) -> None:
    first = phases[0].start_ns
    stamps = sorted({r["t_ns"] for r in rows if r["source"] == "gpu" and r["name"] == "gpu_used_bytes"})
    span = [t for t in stamps if t >= first]
    if len(span) >= 2:
        rate = (len(span) - 1) / ((span[-1] - span[0]) / 1e9)
        gap = max(b - a for a, b in zip(span, span[1:], strict=False)) / 1e9
    else:
        rate, gap = 0.0, float("inf")
    need = 4.0 * 0.99
    out.figures.update(sample_rate_hz=round(rate, 3), max_gap_s=round(gap, 3), samples=len(span))
    _say(
        f"sample rate: {rate:.2f} Hz over {len(span)} samples (need >= 4 Hz less 1% jitter); max gap {gap:.3f} s"
    )
    if rate < need:
        out.fail(f"sample rate {rate:.2f} Hz is below 4 Hz")
    if gap > 2 * args.interval_s + 0.05:
        out.fail(f"a gap of {gap:.3f} s between samples (more than two {args.interval_s:g} s intervals)")


def _analyse(rows: list[dict[str, Any]], phases: list[Phase], args: argparse.Namespace, out: Outcome) -> None:
    from harness.telemetry.summary import memory_summary

    tol = args.tolerance_mib
    by_phase = {p.name: p for p in phases}
    for name, attr in (("gpu_proc_used_bytes", "proc_mib"), ("gpu_used_bytes", "device_mib")):
        for phase, values in _per_phase(rows, name, by_phase).items():
            setattr(by_phase[phase], attr, values)
    _check_rate(rows, phases, args, out)
    base = by_phase.get("baseline")
    if base is None or not base.proc_mib or not base.device_mib:
        out.fail("no NVML memory attributed to the tree during the baseline hold (see the pids below)")
        return
    base_proc, base_dev = median(base.proc_mib), median(base.device_mib)
    _say(f"baseline (CUDA context, no allocation): tree {base_proc:.0f} MiB, device {base_dev:.0f} MiB")
    _say(
        f"{'phase':<14}{'allocated':>12}{'torch rsv':>12}{'tree-base':>12}{'worst':>10}{'dev-base':>12}{'n':>4}"
    )
    table = []
    for p in phases:
        want = p.allocated_bytes / MIB
        if not p.proc_mib:
            out.fail(f"{p.name}: no sample attributed to the tree")
            continue
        got = [v - base_proc for v in p.proc_mib]
        dev = [v - base_dev for v in p.device_mib]
        worst = max(got, key=lambda v: abs(v - want))
        dev_mid = median(dev) if dev else float("nan")
        _say(
            f"{p.name:<14}{want:>8.0f} MiB{p.torch_reserved_bytes / MIB:>8.0f} MiB{median(got):>8.0f} MiB"
            f"{worst:>6.0f} MiB{dev_mid:>8.0f} MiB{len(got):>4}"
        )
        table.append(
            {"phase": p.name, "allocated_mib": want, "tree_minus_base_mib": got, "device_minus_base_mib": dev}
        )
        if abs(worst - want) > tol:
            out.fail(
                f"{p.name}: NVML's tree memory - baseline = {worst:.0f} MiB in a sample; allocated {want:.0f} MiB"
            )
    out.figures["phases"] = table

    measured = [p.name for p in phases if p.name.startswith("alloc-")]
    mem = memory_summary(rows, measured)
    expected = [p.allocated_bytes / MIB for p in phases if p.name in measured for _ in p.device_mib]
    peak_want = max(p.allocated_bytes for p in phases) / MIB
    steady_want = median(expected) if expected else 0.0
    peak = (mem.peak_vram_mb or 0.0) - base_dev
    steady = (mem.steady_vram_mb or 0.0) - base_dev
    out.figures["report"] = mem.model_dump()
    _say(
        f"report figures (memory_summary, the holds as measured steps): peak VRAM {mem.peak_vram_mb} MiB, "
        f"steady VRAM {mem.steady_vram_mb} MiB, peak RSS {mem.peak_rss_mb} MiB, source {mem.gpu_source}"
    )
    _say(
        f"  peak - baseline {peak:.0f} MiB (want {peak_want:.0f}); "
        f"steady - baseline {steady:.0f} MiB (want {steady_want:.0f})"
    )
    if abs(peak - peak_want) > tol:
        out.fail(f"peak VRAM - baseline is {peak:.0f} MiB; the largest allocation is {peak_want:.0f} MiB")
    if abs(steady - steady_want) > tol:
        out.fail(
            f"steady VRAM - baseline is {steady:.0f} MiB; the median allocation is {steady_want:.0f} MiB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.telemetry.gpucheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with torch+CUDA for the child")
    parser.add_argument("--steps", default="0,1,2,4", help="cumulative GiB to hold, in order")
    parser.add_argument("--hold-s", type=float, default=2.0)
    parser.add_argument(
        "--interval-s", type=float, default=0.25, help="the sampler's interval (harness default)"
    )
    parser.add_argument("--tolerance-mib", type=float, default=32.0)
    parser.add_argument("--timeout-s", type=float, default=180.0)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--require-gpu", action="store_true", help="exit 3 instead of 0 when there is no GPU")
    args = parser.parse_args(argv)
    code, message = _preflight(args.python)
    if code is not None:
        _say(message)
        return 3 if code == 0 and args.require_gpu else code
    out = Outcome()
    out.figures["device_used_mib_before"] = _device_used_mib()
    _say(f"GPU check: steps {args.steps} GiB, hold {args.hold_s:g} s, sampler every {args.interval_s:g} s")
    _say(f"device memory used before the child: {out.figures['device_used_mib_before']} MiB")
    try:
        rows, phases, diag = _drive(args)
    except (OSError, TimeoutError) as err:
        _say(f"ERROR: the allocating child failed: {err}")
        return 2
    out.figures["diagnostics"] = diag
    if diag["child_exit"] != 0 or not phases:
        _say(f"ERROR: the child exited {diag['child_exit']}:\n{diag['child_stderr_tail']}")
        return 2
    _analyse(rows, phases, args, out)
    if "tree_pids_at_peak" in diag:
        _say(
            f"tree pids at the peak: {diag['tree_pids_at_peak']}; NVML's compute processes: {diag['nvml_processes_at_peak']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(out)}, indent=2, default=str))
    for failure in out.failures:
        _say(f"FAIL: {failure}")
    _say(
        "PASS: rate, attribution and the report's peak/steady figures match the allocations"
        if out.ok
        else f"{len(out.failures)} check(s) failed"
    )
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main())
