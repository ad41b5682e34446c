"""Run one fidelity step: a fresh exact-mode sim, the harness's real Locust load path, and the truth.

Why a fresh sim per step: its write log then holds exactly this step's
requests, so "streams in flight at the server" and the token totals need no
filtering, and one step's backlog cannot leak into the next.

Why the load goes through ``harness.load.runner.run_step`` with a
``LoadPlan``: the benchmark must measure the code path ``tokenbench run``
uses, not a special client. The only extra thing here is a watcher that
samples the Locust processes' RSS (psutil) for the peak-memory figure, and
the CPU of each kind of work by thread (``cpuwatch``: where the cores went
during the measured window); CPU
comes from the load layer's own health report (CPU-seconds of the processes
running users, over the step) and, for the whole harness process tree (this
orchestrator plus every Locust process, start-up and master included), from
``getrusage`` of self and reaped children around the run, or, where Locust did
not reap its workers, this process plus each Locust process's last sampled CPU
time (whichever is larger; both are lower bounds). The truth server is
still running then, so its CPU is never counted as the client's.

Three ground truths (issue 11 §2), all logging the real write time of every
chunk: the C truth server (``truthserver.c``, compiled on first use by
``cbuild``; the default), the same server in Python
(``harness.fidelity.truthserver``, ``--truth lean``), and the sim
(``--truth sim``). Why C by default: on a slow 2-core machine the Python
server costs 15-24 µs of CPU per token, so at 1,024 streams × ITL 10 ms it
needs more than a core, falls behind its own schedule and takes CPU from the
client under test; the C one costs 11-13 µs there, of which its own code is
about 1 µs and the rest the kernel's loopback TCP send. The sim's full server
falls behind there too.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness.backends.base import BackendStartError
from harness.backends.process import ManagedProcess, ProcessRegistry, free_port, tail, wait_ready
from harness.fidelity.cbuild import truthserver_binary
from harness.fidelity.cpushare import REALTIME_PRIORITY, TRUTH_SCHEDS, realtime_prefix
from harness.fidelity.cpuwatch import CpuWatcher, Sample
from harness.fidelity.truthlog import read_truth_log
from harness.load.plan import LoadPlan
from harness.load.prompts import build_prompts, write_prompts
from harness.load.runner import PROJECT_ROOT, run_step
from harness.records import read_records
from harness.sim.writelog import RequestTruth, read_write_log
from harness.workload import LengthDist

SIM_READY_S = 20.0


@dataclass(frozen=True)
class SimTiming:
    """The exact-mode timing every step uses (issue 3 §3: TTFT 100 ms, ITL 10 ms, 128 tokens)."""

    ttft_ms: float = 100.0
    itl_ms: float = 10.0
    output_tokens: int = 128
    prompt_tokens: int = 32


@dataclass(frozen=True)
class StepSpec:
    """One load level of the benchmark."""

    name: str
    kind: str  # "concurrency" | "rate"
    target: float
    duration_s: float
    warmup_s: float = 1.0
    processes: int = 1

    def label(self) -> str:
        load = f"c={self.target:g}" if self.kind == "concurrency" else f"{self.target:g} req/s"
        return f"{load} ×{self.processes}p" if self.processes > 1 else load


@dataclass
class ClientUsage:
    """Resource use of the Locust process tree during one step."""

    peak_rss_bytes: int = 0
    total_cpu_s: float = 0.0
    samples: int = 0


@dataclass
class _RssWatcher:
    """Samples the summed RSS, and each one's CPU time, of every Locust process below us until stopped.

    Why CPU here too: ``RUSAGE_CHILDREN`` only counts a process once every
    parent on its way up has waited for it; a Locust master that exits
    without reaping its ``--processes`` workers drops their CPU (one
    1024×2 step showed 2.4 CPU-s for a tree that used over 10). The last CPU
    time seen per process is a lower bound that does not depend on reaping.
    Each turn also hands the processes it found to ``cpu`` (``cpuwatch``), so
    they are listed once per turn for both.
    """

    cpu: CpuWatcher
    interval_s: float = 0.2
    peak: int = 0
    samples: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fidelity-rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            procs = locust_processes()
            self.cpu.sample([proc.pid for proc in procs])
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                    t = proc.cpu_times()
                    self.cpu_by_pid[proc.pid] = t.user + t.system
                except psutil.Error:
                    continue  # exited between listing and reading
            self.peak = max(self.peak, total)
            self.samples += 1
            self._stop.wait(self.interval_s)


def locust_processes() -> list[psutil.Process]:
    """The Locust processes below this one (master and workers), now."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for proc in children:
        try:
            if any("locust" in part for part in proc.cmdline()[:4]):
                found.append(proc)
        except psutil.Error:
            continue  # exited between listing and reading
    return found


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _tree_cpu_s() -> float:
    """CPU-seconds of this process and its reaped children (the Locust tree once ``run_step`` returns)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


TRUTH_KINDS = ("c", "lean", "sim")
TRUTH_CONGESTION = "reno"
TRUTH_LOG_KINDS = ("c", "lean")  # the truth servers (binary log with due/attempt times), not the sim


def start_truth_server(
    step_dir: Path,
    timing: SimTiming,
    registry: ProcessRegistry,
    kind: str = "c",
    sched: str = "fifo",
    congestion: str | None = TRUTH_CONGESTION,
) -> tuple[ManagedProcess, str, Path, str]:
    """A truth server (``c``: the compiled one, ``lean``: Python) on a free port.

    Returns (process, URL, log, scheduling): ``sched="fifo"`` starts it as
    ``SCHED_FIFO`` where permitted (``cpushare.realtime_prefix``), else it runs
    at the nice it asks for itself; the scheduling string says which it got.
    ``congestion``: the TCP congestion control of its connections (None: the
    system's). Why reno by default: over loopback the kernel takes in the
    client's ACKs on the client's CPU, so the server socket's per-ACK work is
    charged to the client's reader threads; reno's is the least (against the
    system's BBR in six paired c1024 runs: 8.5 % less CPU per read, 7 % less
    per write, and more streams held). A remote server pays that on its own host.
    The C binary is built first if needed; a failed build raises ``CBuildError`` (never a fallback).
    """
    if sched not in TRUTH_SCHEDS:
        raise ValueError(f"sched: expected one of {TRUTH_SCHEDS}, got {sched!r}")
    exe = (
        [str(truthserver_binary())] if kind == "c" else [sys.executable, "-m", "harness.fidelity.truthserver"]
    )
    prefix = realtime_prefix() if sched == "fifo" else []
    exe = [*prefix, *exe]
    log = step_dir / "truth.bin"

    def cmd(port: int) -> list[str]:
        return [
            *exe,
            "--port",
            str(port),
            "--ttft-ms",
            f"{timing.ttft_ms:g}",
            "--itl-ms",
            f"{timing.itl_ms:g}",
            "--log",
            str(log),
            *(["--congestion", congestion] if congestion else []),
        ]

    proc, base = _serve(cmd, step_dir / "truth.log", registry)
    return proc, base, log, f"SCHED_FIFO {REALTIME_PRIORITY}" if prefix else "normal (its own nice)"


START_TRIES = 3


def _serve(
    cmd: Callable[[int], list[str]], log_path: Path, registry: ProcessRegistry
) -> tuple[ManagedProcess, str]:
    """Start a ground-truth server on a free port and wait for its /health; one that never gets ready is stopped.

    Why a new port on "address already in use": ``free_port`` only knows the
    port was free a moment ago, and beside tests that open thousands of
    connections the kernel may hand it out as some connection's source port
    first (a CI run lost a fidelity test that way). Any other failure is final.
    """
    for attempt in range(1, START_TRIES + 1):
        port = free_port()
        proc = ManagedProcess(cmd(port), log_path=log_path, cwd=PROJECT_ROOT, registry=registry)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready([base + "/health"], SIM_READY_S, proc)
        except BackendStartError:
            proc.terminate(5.0)
            in_use = any("address already in use" in line.lower() for line in tail(log_path, 20))
            if attempt < START_TRIES and in_use:
                continue
            raise
        except BaseException:
            proc.terminate(5.0)
            raise
        return proc, base
    raise AssertionError("unreachable")  # the last attempt returns or raises


def start_sim(
    step_dir: Path, timing: SimTiming, registry: ProcessRegistry
) -> tuple[ManagedProcess, str, Path]:
    """An exact-mode sim on a free port with a write log; returns (process, base URL, write-log path)."""
    write_log = step_dir / "sim-writes.csv"

    def cmd(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "harness.sim",
            "--port",
            str(port),
            "--mode",
            "exact",
            "--ttft-ms",
            f"{timing.ttft_ms:g}",
            "--itl-ms",
            f"{timing.itl_ms:g}",
            "--write-log",
            str(write_log),
        ]

    proc, base = _serve(cmd, step_dir / "sim.log", registry)
    return proc, base, write_log


def write_sim_tokenizer(path: Path) -> Path:
    """The sim's exact tokenizer: its output is the word ``tok`` once per token (``harness.sim.generation``).

    Why the fidelity run needs one: the client's own output count comes from
    retokenizing the streamed text (never from the server's usage, which
    would make the count agree with itself), so without a tokenizer the
    "tokens the harness counted" column would be n/a.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    from harness.sim.generation import TOKEN_TEXT

    tok = Tokenizer(models.WordLevel({TOKEN_TEXT.strip(): 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_plan(spec: StepSpec, timing: SimTiming, step_dir: Path, base_url: str, seed: int) -> LoadPlan:
    """The same kind of plan ``tokenbench run`` writes for a sim cell (plus the sim's exact tokenizer)."""
    count = 256
    prompts = build_prompts(
        None,
        LengthDist(dist="fixed", value=timing.prompt_tokens),
        LengthDist(dist="fixed", value=timing.output_tokens),
        count,
        seed,
        "text",
    )
    prompts_path = step_dir / "prompts.jsonl"
    write_prompts(prompts_path, prompts)
    return LoadPlan(
        run_id="fidelity",
        cell_id="sim-exact",
        step_id=spec.name,
        api="completions",
        base_url=base_url,
        model="sim-model",
        kind=spec.kind,
        target=spec.target,
        warmup_s=spec.warmup_s,
        duration_s=spec.duration_s,
        timeout_s=60.0,
        processes=spec.processes,
        seed=seed,
        prompts_path=str(prompts_path),
        records_path=str(step_dir / "records.parquet"),
        health_path=str(step_dir / "health.json"),
        simulated=True,
        tokenizer_path=str(write_sim_tokenizer(step_dir / "sim-tokenizer.json")),
    )


@dataclass
class StepRun:
    """Raw material of one step: records, truth, the load layer's health, and client resource use."""

    spec: StepSpec
    rows: list[dict[str, Any]]
    truth: dict[str, RequestTruth]
    health: dict[str, Any]
    usage: ClientUsage
    wall_s: float
    truth_kind: str = "sim"
    lateness_ns: Any = None  # numpy array of attempt − due per chunk (truth servers only)
    backpressure_ns: Any = None  # numpy array of write − attempt per chunk (ditto)
    truth_cpu_s: float | None = None  # the truth server's own CPU-seconds (ditto)
    truth_nice: int | None = None  # its scheduling niceness (ditto)
    truth_sched: str | None = None  # its scheduling class as started (ditto)
    cpu_samples: list[Sample] = field(default_factory=list)  # cpuwatch: CPU by kind of work over the step


def run_fidelity_step(
    spec: StepSpec,
    timing: SimTiming,
    step_dir: Path,
    registry: ProcessRegistry,
    seed: int = 7,
    truth_kind: str = "c",
    truth_sched: str = "fifo",
    truth_congestion: str | None = TRUTH_CONGESTION,
) -> StepRun:
    """Start the truth side, drive ``spec`` through ``run_step``, stop it (flushing its log), read both sides."""
    if truth_kind not in TRUTH_KINDS:
        raise ValueError(f"truth_kind: expected one of {TRUTH_KINDS}, got {truth_kind!r}")
    step_dir.mkdir(parents=True, exist_ok=True)
    if truth_kind in TRUTH_LOG_KINDS:
        sim, base_url, write_log, sched = start_truth_server(
            step_dir, timing, registry, truth_kind, truth_sched, truth_congestion
        )
    else:
        sched = None
        sim, base_url, write_log = start_sim(step_dir, timing, registry)
    cpu = CpuWatcher(sim.pid)
    watcher = _RssWatcher(cpu)
    try:
        plan = make_plan(spec, timing, step_dir, base_url, seed)
        cpu0, self0 = _tree_cpu_s(), _self_cpu_s()
        watcher.start()
        started = time.monotonic()
        try:
            outcome = run_step(plan, step_dir / "load", registry=registry)
        finally:
            watcher.stop()
        wall = time.monotonic() - started
        # Both are lower bounds of the tree's CPU (reaping vs sampling every 0.2 s): take the larger.
        sampled = _self_cpu_s() - self0 + sum(watcher.cpu_by_pid.values())
        total_cpu = max(_tree_cpu_s() - cpu0, sampled)
    finally:
        sim.terminate(10.0)  # SIGTERM: the sim flushes its write log on the way out
    rows = read_records(Path(outcome.records_path)).to_pylist()
    lateness = truth_cpu = truth_nice = backpressure = None
    if truth_kind in TRUTH_LOG_KINDS:
        log = read_truth_log(write_log)
        truth, lateness, truth_cpu, truth_nice = log.requests, log.lateness_ns, log.cpu_s, log.nice
        backpressure = log.backpressure_ns
    else:
        truth = read_write_log(write_log)
    usage = ClientUsage(peak_rss_bytes=watcher.peak, total_cpu_s=total_cpu, samples=watcher.samples)
    return StepRun(
        spec,
        rows,
        truth,
        outcome.health,
        usage,
        wall,
        truth_kind,
        lateness,
        backpressure,
        truth_cpu,
        truth_nice,
        sched,
        cpu.samples,
    )
