"""``python -m harness.fidelity``: the harness measured against the sim's ground truth (issue 3 §3).

Why it exists: a benchmark's numbers are only as good as its client. Here the
server's timings are known exactly (TTFT 100 ms, ITL 10 ms, 128 tokens, and
the truth side logs the real write time of every chunk), so any difference
between the harness's report and the write log is the harness's own error.
The truth side is by default the C truth server (``--truth c``,
``harness/fidelity/truthserver.c``, compiled into ``TOKENBENCH_HOME/bin`` on
first use; issue 11 §2: it costs about half the Python server's CPU per token,
so more of a 2-core machine is left to the client and the load asked for is
closer to the load served), the same server in Python (``--truth lean``) or
the sim (``--truth sim``). The purest client error is the per-chunk *stamp lag*
(client stamp − real write of the chunk's last token), valid even where the
truth side ran late; a step whose truth side missed its own schedule is
labelled TRUTH-LIMITED (SIM-LIMITED for the sim) with by how much. Each step
prints one table row and the whole run is saved as JSON under ``reports/``.

The targets are the issue's, for this 2-core machine where the sim and the
client share the CPU; they are evaluated and printed, never loosened. A missed
target does not make the command fail (it is a measurement, not a test);
``--strict`` turns misses into exit code 1 for CI that wants a gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import write_json
from harness.backends.process import ProcessRegistry
from harness.fidelity.cbuild import CBuildError, truthserver_binary
from harness.fidelity.compare import compare_step
from harness.fidelity.cpushare import TRUTH_SCHEDS
from harness.fidelity.cpuwatch import window_cores
from harness.fidelity.steps import (
    TRUTH_CONGESTION,
    TRUTH_KINDS,
    SimTiming,
    StepRun,
    StepSpec,
    run_fidelity_step,
)

FULL_TIMING = SimTiming()
QUICK_TIMING = SimTiming(output_tokens=24)


def full_steps(processes: list[int]) -> list[StepSpec]:
    """The issue's steps; c1024 once per entry of ``processes`` to show what ``--processes`` buys."""
    steps = [
        StepSpec("c1", "concurrency", 1, duration_s=5, warmup_s=1),
        StepSpec("c64", "concurrency", 64, duration_s=10, warmup_s=2),
        StepSpec("c256", "concurrency", 256, duration_s=10, warmup_s=3),
    ]
    for p in processes:
        name = "c1024" if p == 1 else f"c1024x{p}"
        steps.append(StepSpec(name, "concurrency", 1024, duration_s=10, warmup_s=4, processes=p))
    steps += [
        StepSpec("r10", "rate", 10, duration_s=20, warmup_s=1),
        StepSpec("r50", "rate", 50, duration_s=10, warmup_s=1),
        StepSpec("r200", "rate", 200, duration_s=20, warmup_s=2),
    ]
    return steps


def quick_steps() -> list[StepSpec]:
    """A few seconds of each shape (closed, closed over two processes, open) for the test suite."""
    return [
        StepSpec("c1", "concurrency", 1, duration_s=1.0, warmup_s=0.3),
        StepSpec("c8x2", "concurrency", 8, duration_s=1.5, warmup_s=0.5, processes=2),
        StepSpec("r20", "rate", 20, duration_s=2.0, warmup_s=0.3),
    ]


def _check(name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    met = value is not None and (value <= limit if op == "<=" else value >= limit)
    return {"check": name, "value": value, "op": op, "limit": limit, "met": met}


def _abs(v: float | None) -> float | None:
    return None if v is None else abs(v)


def step_targets(spec: StepSpec, res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that apply to this step (by load shape), evaluated."""
    out: list[dict[str, Any]] = []
    ttft, itl = res["ttft_ms"]["diff"], res["itl_ms"]["diff"]
    health = res["health"]
    out.append(
        _check("self-diagnosis present (loop-lag p99 sampled)", 1.0 if health["present"] else 0.0, ">=", 1)
    )
    lag = res["stamp_lag"]["all_ms"]["p99"]
    if spec.kind == "concurrency" and spec.target == 256:
        out += [
            _check("stamp lag p99 ms", lag, "<=", 1.0),
            _check("|TTFT p50 error| ms", _abs(ttft["p50"]), "<=", 1.0),
            _check("|TTFT p99 error| ms", _abs(ttft["p99"]), "<=", 5.0),
            _check("|ITL p50 error| ms", _abs(itl["p50"]), "<=", 1.0),
            _check("|ITL p99 error| ms", _abs(itl["p99"]), "<=", 5.0),
            _check("token totals exact", 1.0 if res["tokens"]["exact"] else 0.0, ">=", 1),
        ]
    if spec.kind == "concurrency" and spec.target == 1024:
        out += [
            _check(
                "streams in flight at server (fraction)",
                res["server_in_flight"]["fraction_of_target"],
                ">=",
                0.975,
            ),
            _check("stamp lag p99 ms", lag, "<=", 5.0),
            _check("|TTFT p50 error| ms", _abs(ttft["p50"]), "<=", 5.0),
            _check(
                "output tokens per client CPU-s (whole harness tree)",
                res["client"]["tokens_per_tree_cpu_s"],
                ">=",
                50_000,
            ),
        ]
    if spec.kind == "rate" and spec.target == 200:
        cv = res["arrivals"]["truth"]["cv"]
        out += [
            _check("|arrival rate error| % (at server)", _abs(res["arrivals"]["rate_error_pct"]), "<=", 2.0),
            _check("|CV − 1| (at server)", None if cv is None else abs(cv - 1.0), "<=", 0.1),
        ]
    return out


SIM_TTFT_SLACK_MS = 5.0
SIM_ITL_SLACK_MS = 1.0


def _ms_block(ns: Any) -> dict[str, float]:
    v = np.asarray(ns, dtype=float) / 1e6
    return {
        "p50": float(np.percentile(v, 50)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "over_1ms_fraction": float((v > 1.0).mean()),
    }


def sim_keeping_time(
    res: dict[str, Any], timing: SimTiming, lateness_ns: Any = None, backpressure_ns: Any = None
) -> dict[str, Any]:
    """Did the truth side (sim or truth server) keep its promised timing? (Its log says when it wrote.)

    Why: on a shared 2-core machine another process can starve the truth
    side; its truth then drifts from TTFT 100 ms / ITL 10 ms and the step
    measures the machine, not the harness. Such a step is labelled
    *truth-limited* (*sim-limited* for the sim) so that its errors are not
    read as the client's; the stamp lag stays valid either way. This is a
    label, not a target.

    For the sim, the judge is its truth TTFT/ITL p50 against the promise. The
    truth server also logs each chunk's due and attempt time, so it is judged
    by its own lag (attempt − due: p50 over ``SIM_ITL_SLACK_MS`` or p99 over
    ``SIM_TTFT_SLACK_MS``), which a client that stops reading cannot inflate;
    what such a client adds (write − attempt, the socket was full) is given
    apart as ``backpressure_ms``.
    """
    ttft, itl = res["ttft_ms"]["truth"]["p50"], res["itl_ms"]["truth"]["p50"]
    ttft_late = None if ttft is None else ttft - timing.ttft_ms
    itl_off = None if itl is None else itl - timing.itl_ms
    limited = (ttft_late is not None and abs(ttft_late) > SIM_TTFT_SLACK_MS) or (
        itl_off is not None and abs(itl_off) > SIM_ITL_SLACK_MS
    )
    out: dict[str, Any] = {"ttft_p50_late_ms": ttft_late, "itl_p50_off_ms": itl_off, "limited": limited}
    if lateness_ns is not None and len(lateness_ns):
        late = _ms_block(lateness_ns)
        out["write_lateness_ms"] = late
        out["limited"] = late["p50"] > SIM_ITL_SLACK_MS or late["p99"] > SIM_TTFT_SLACK_MS
    if backpressure_ns is not None and len(backpressure_ns):
        out["backpressure_ms"] = _ms_block(backpressure_ns)
    return out


def summarize(run: StepRun, timing: SimTiming = FULL_TIMING) -> dict[str, Any]:
    """One step's JSON entry: the comparison plus client resource use, self-diagnosis and targets."""
    spec = run.spec
    res = compare_step(run.rows, run.truth, kind=spec.kind, target=spec.target)
    received = sum(int(r.get("client_output_tokens") or 0) for r in run.rows)
    h = run.health
    cpu = h.get("client_cpu_s")
    res["step"] = asdict(spec) | {"label": spec.label(), "wall_s": run.wall_s, "truth": run.truth_kind}
    res["client"] = {
        "tokens_received": received,
        "cpu_s": cpu,
        "cpu_s_per_1k_tokens": 1000 * cpu / received if cpu and received else None,
        "tokens_per_cpu_s": received / cpu if cpu else None,
        "harness_tree_cpu_s": run.usage.total_cpu_s,
        "tokens_per_tree_cpu_s": received / run.usage.total_cpu_s if run.usage.total_cpu_s else None,
        "peak_rss_mb": run.usage.peak_rss_bytes / 2**20,
        "workers": h.get("workers", []),
    }
    res["health"] = {
        "present": h.get("loop_lag_p99_ms") is not None and cpu is not None,
        "loop_lag_p50_ms": h.get("loop_lag_p50_ms"),
        "loop_lag_p99_ms": h.get("loop_lag_p99_ms"),
        "loop_lag_max_ms": h.get("loop_lag_max_ms"),
        "client_cpu_pct": h.get("client_cpu_pct"),
        "coalesced_chunk_fraction": h.get("coalesced_chunk_fraction"),
        "harness_limited": bool(h.get("limited")),
        "reasons": h.get("reasons", []),
    }
    res["sim_health"] = sim_keeping_time(res, timing, run.lateness_ns, run.backpressure_ns)
    sent = sum(t.output_tokens for t in run.truth.values())  # warm-up included, as the CPU figure is
    res["truth_server"] = {
        "kind": run.truth_kind,
        "sched": run.truth_sched,
        "nice": run.truth_nice,
        "cpu_s": run.truth_cpu_s,
        "cpu_s_per_1k_tokens_written": 1000 * run.truth_cpu_s / sent if run.truth_cpu_s and sent else None,
    }
    res["machine_cpu"] = measured_window_cpu(run)
    res["targets"] = step_targets(spec, res)
    return res


def measured_window_cpu(run: StepRun) -> dict[str, Any]:
    """Cores used by each kind of work (``cpuwatch``) from the first to the last measured send.

    Why that window: it is the one the in-flight figure is taken over, and it
    leaves out start-up and the drain after the last send.
    """
    sent = [r["sent_ns"] for r in run.rows if not r.get("warmup") and r.get("sent_ns") is not None]
    cores = {"cores": os.cpu_count()}
    if not sent:
        return cores | window_cores([], 0.0, 0.0)
    return cores | window_cores(run.cpu_samples, min(sent) / 1e9, max(sent) / 1e9)


def _f(v: float | None, fmt: str = "{:+.2f}") -> str:
    return "-" if v is None else fmt.format(v)


HEADER = (
    f"{'step':<14}{'ok':>6}{'TTFT p50 h/t (Δ)':>22}{'TTFT p99 Δ':>11}{'ITL p50 h/t (Δ)':>22}"
    f"{'ITL p99 Δ':>10}{'stamp lag p50/p99/max':>23}{'1st tok p50/p99/max':>21}"
    f"{'tokens h/t':>16}{'rate/CV (srv)':>15}{'srv tok/s':>10}{'in-flight':>10}"
    f"{'CPUs/1k tok':>12}{'tok/CPUs':>10}{'tok/treeCPUs':>13}{'RSS MB':>8}{'lag p99':>8}  lim  targets"
)


def row(res: dict[str, Any]) -> str:
    t, i = res["ttft_ms"], res["itl_ms"]
    tok, arr, c, hl = res["tokens"], res["arrivals"]["truth"], res["client"], res["health"]
    fl = res["server_in_flight"]
    ttft = f"{_f(t['harness']['p50'], '{:.1f}')}/{_f(t['truth']['p50'], '{:.1f}')} ({_f(t['diff']['p50'])})"
    itl = f"{_f(i['harness']['p50'], '{:.2f}')}/{_f(i['truth']['p50'], '{:.2f}')} ({_f(i['diff']['p50'])})"
    rate = f"{_f(arr['rate'], '{:.1f}')}/{_f(arr['cv'], '{:.2f}')}"
    flight = _f(fl["mean"], "{:.0f}")
    sl, fl1 = res["stamp_lag"]["all_ms"], res["stamp_lag"]["first_ms"]
    lag3 = lambda b: "/".join(_f(b[k], "{:.2f}") for k in ("p50", "p99", "max"))  # noqa: E731
    missed = [x["check"] for x in res["targets"] if not x["met"]]
    verdict = "ok" if not missed else "MISS: " + "; ".join(missed)
    sh = res.get("sim_health", {})
    if sh.get("limited"):
        who = "SIM" if res["step"].get("truth") == "sim" else "TRUTH"
        late = sh.get("write_lateness_ms")
        how = f"TTFT p50 {_f(sh['ttft_p50_late_ms'])} ms, ITL p50 {_f(sh['itl_p50_off_ms'])} ms"
        if late:
            how = f"own write lag p50 {late['p50']:.2f} / p99 {late['p99']:.2f} ms; " + how
        verdict += f" ({who}-LIMITED: the truth side missed its own timing by {how})"
    return (
        f"{res['step']['name']:<14}{res['requests']['ok']:>6}{ttft:>22}{_f(t['diff']['p99']):>11}{itl:>22}"
        f"{_f(i['diff']['p99']):>10}{lag3(sl):>23}{lag3(fl1):>21}"
        f"{tok['harness_counted']:>8}/{tok['truth_sent']:<7}{rate:>15}"
        f"{_f(res['server_tokens_per_s'], '{:,.0f}'):>10}{flight:>10}"
        f"{_f(c['cpu_s_per_1k_tokens'], '{:.4f}'):>12}{_f(c['tokens_per_cpu_s'], '{:,.0f}'):>10}"
        f"{_f(c['tokens_per_tree_cpu_s'], '{:,.0f}'):>13}"
        f"{c['peak_rss_mb']:>8.0f}{_f(hl['loop_lag_p99_ms'], '{:.2f}'):>8}  {'YES' if hl['harness_limited'] else 'no ':<4} "
        f"{verdict}"
    )


CPU_LABELS = (
    ("truth_server", "truth server"),
    ("reader_threads", "reader threads"),
    ("locust_python", "Locust's other threads"),
    ("other", "other"),
    ("idle", "idle"),
    ("steal", "steal"),
)


def cpu_line(res: dict[str, Any]) -> str:
    """The step's ``machine_cpu`` as one indented line under its row: where the cores went while it ran."""
    m = res.get("machine_cpu") or {}
    if m.get("window_s") is None:
        return "  cores in use over the measured window: n/a (not sampled)"
    parts = ", ".join(f"{label} {m[key]:.2f}" for key, label in CPU_LABELS)
    return f"  cores in use over the measured window ({m['window_s']:.1f} s, {m['cores']} cores): {parts}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.fidelity", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds per shape (for tests)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default reports/fidelity-<ts>.json)")
    p.add_argument(
        "--processes",
        default="1,2",
        help="Locust process counts to run the 1024-stream step with, comma-separated (default 1,2)",
    )
    p.add_argument("--only", default="", help="run only these step names, comma-separated (e.g. c256,r200)")
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep per-step files here (default: a temp dir)"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    p.add_argument(
        "--truth",
        choices=TRUTH_KINDS,
        default="c",
        help="ground truth: the C truth server (default; compiled with gcc on first use, about half the "
        "Python one's CPU per token), the same server in Python (lean) or the sim",
    )
    p.add_argument(
        "--truth-sched",
        choices=TRUTH_SCHEDS,
        default="fifo",
        help="the truth server's scheduling: SCHED_FIFO above the stream readers where permitted (default; "
        "it then keeps its schedule at 1,024 streams), or only the nice it asks for",
    )
    p.add_argument(
        "--truth-congestion",
        default=TRUTH_CONGESTION,
        help=f"the truth server's TCP congestion control (default {TRUTH_CONGESTION}: the least per-ACK work, "
        "which over loopback the client's CPU pays; 'system' keeps the system's)",
    )
    return p


def _parse_processes(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--processes: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"--processes: each value must be >= 1, got {text!r}")
    return values


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected steps and return the report (also printed row by row)."""
    timing = QUICK_TIMING if args.quick else FULL_TIMING
    steps = quick_steps() if args.quick else full_steps(_parse_processes(args.processes))
    # the truth servers' option; the sim keeps the system's
    congestion = None if args.truth_congestion == "system" or args.truth == "sim" else args.truth_congestion
    only = {s for s in args.only.split(",") if s}
    if only:
        unknown = only - {s.name for s in steps}
        if unknown:
            raise SystemExit(f"--only: unknown step(s) {sorted(unknown)}; known: {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in only]
    report: dict[str, Any] = {
        "benchmark": "harness-fidelity",
        "quick": bool(args.quick),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "sim": asdict(timing),
        "truth": args.truth,
        "truth_sched": args.truth_sched,
        "truth_congestion": congestion,
        "steps": [],
    }
    if args.truth == "c":  # build (or find) it before any step, so a failed build stops the run at once
        report["truth_binary"] = str(truthserver_binary())
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="tb-fidelity-") as tmp, ProcessRegistry() as registry:
        root = args.workdir or Path(tmp)
        for spec in steps:
            run_ = run_fidelity_step(
                spec,
                timing,
                root / spec.name,
                registry,
                truth_kind=args.truth,
                truth_sched=args.truth_sched,
                truth_congestion=congestion,
            )
            res = summarize(run_, timing)
            report["steps"].append(res)
            print(row(res), flush=True)
            print(cpu_line(res), flush=True)
    misses = [
        f"{s['step']['name']}: {t['check']}" for s in report["steps"] for t in s["targets"] if not t["met"]
    ]
    report["targets_missed"] = misses
    report["all_targets_met"] = not misses
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out or Path("reports") / f"fidelity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        report = run(args)
    except CBuildError as err:  # no silent fallback to another truth side: say why and stop
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json(out, report)
    print(f"\nwrote {out}")
    if report["targets_missed"]:
        print("targets missed:\n  " + "\n  ".join(report["targets_missed"]))
    else:
        print("all targets met")
    return 1 if args.strict and report["targets_missed"] else 0
