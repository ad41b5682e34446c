"""A/A check: does a gate policy stay quiet when nothing changed?

Why a tool and not only a test: whether a policy's tolerances fit a machine
depends on that machine's run-to-run noise, which only reruns show. This
reruns a scenario N times (or takes N finished run folders), saves a
baseline from some runs and gates another run of the same configuration
against it, for every run in turn, and prints the verdicts. Any regression
is a false alarm: the policy (or the gate) cries wolf on this machine.

Pairings (``--pool K``): run i is gated against a baseline saved from the K
runs after it (cyclically), so with K ≥ 3 tail rules are judged with
between-run noise; K = 1 is the plain "rerun vs last run" case.

    python -m harness.gate.aa scenarios/ci-sim.yaml --reruns 10 --out /tmp/aa
    python -m harness.gate.aa --runs /tmp/aa/runs/* --pool 3 --policy my.yaml

It also prints the run-to-run spread it saw: per metric, the standard deviation
of ln(value) across the runs of each step (median and largest over steps). That
is the figure a policy's ``run_to_run_noise`` stands in for when a gate has a
single repeat per side.

Exit code: 0 no regression in any pairing, 1 at least one, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.gate.baseline import load_baseline, save_baseline
from harness.gate.match import match_runs
from harness.gate.measure import Measurer
from harness.gate.policy import PolicyError, load_policy
from harness.gate.rundata import GateInputError, load_run_folder, merge_repeats
from harness.gate.verdict import evaluate

SPREAD_METRICS: list[str] = [
    "ttft_p50",
    "tpot_p50",
    "itl_p50",
    "e2e_p50",
    "output_tok_s",
    "request_throughput",
]


@dataclass
class Pairing:
    run: str
    baseline: list[str]
    policy: str
    verdict: str
    counts: dict[str, int]
    regressions: list[str]


def rerun(scenario: Path, reruns: int, out: Path, overrides: list[str]) -> list[Path]:
    """Run ``scenario`` ``reruns`` times with the real CLI; returns the run folders."""
    folders: list[Path] = []
    for i in range(reruns):
        dest = out / "runs" / f"r{i:02d}"
        cmd = [sys.executable, "-m", "harness.cli", "run", str(scenario), "--out", str(dest)]
        for item in overrides:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        runs = sorted(p for p in dest.iterdir() if p.is_dir()) if dest.is_dir() else []
        if proc.returncode != 0 or not runs:
            raise GateInputError(
                f"rerun {i} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        folders.append(runs[-1])
        print(f"rerun {i + 1}/{reruns}: {runs[-1]}", flush=True)
    return folders


def pairings(
    folders: list[Path], policies: list[Path | None], pool: int, work: Path, allow_env_mismatch: bool = True
) -> list[Pairing]:
    """Gate every run against a baseline saved from the ``pool`` runs after it, under each policy."""
    if len(folders) < pool + 1:
        raise GateInputError(f"--pool {pool} needs at least {pool + 1} runs, got {len(folders)}")
    loaded = [load_run_folder(p) for p in folders]
    out: list[Pairing] = []
    for i, run in enumerate(loaded):
        idx = [(i + k) % len(loaded) for k in range(1, pool + 1)]
        path = save_baseline(merge_repeats([loaded[j] for j in idx]), f"aa-{i}", work / f"aa-{i}-{pool}.json")
        base = load_baseline(path)
        for pol_path in policies:
            pol = load_policy(pol_path)
            res = evaluate(match_runs(base, run), pol, base.label, run.label, run.scenario)
            out.append(
                Pairing(
                    run=folders[i].name,
                    baseline=[folders[j].name for j in idx],
                    policy=str(pol_path or "default"),
                    verdict=res.verdict,
                    counts=res.counts(),
                    regressions=[
                        f"{c.target} {c.metric} {c.change * 100:+.1f}%" if c.change is not None else c.metric
                        for c in res.checks
                        if c.verdict == "regression"
                    ],
                )
            )
    return out


def spread(folders: list[Path], metrics: list[str]) -> dict[str, dict[str, float]]:
    """Observed run-to-run spread per metric: sd of ln(value) across runs, per step; median and max over steps.

    Steps are matched by key (cell identity, step); a step needs a positive value in at least two runs.
    """
    loaded = [load_run_folder(p) for p in folders]
    measurer = Measurer(resamples=200, seed=0, confidence=0.95)
    out: dict[str, dict[str, float]] = {}
    keys = set.intersection(*(set(run.steps) for run in loaded)) if loaded else set()
    for metric in metrics:
        sds: list[float] = []
        for key in sorted(keys):
            values = np.array([measurer.measure(run.steps[key], metric).point for run in loaded])
            values = values[np.isfinite(values) & (values > 0)]
            if values.size >= 2:
                sds.append(float(np.std(np.log(values), ddof=1)))
        if sds:
            out[metric] = {"median": float(np.median(sds)), "max": float(max(sds)), "steps": len(sds)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.gate.aa", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="?", type=Path, help="scenario to rerun")
    ap.add_argument("--reruns", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("reports/aa"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="passed to tokenbench run")
    ap.add_argument("--runs", nargs="+", type=Path, help="finished run folders instead of rerunning")
    ap.add_argument("--policy", action="append", type=Path, default=[], help="policy file (repeatable)")
    ap.add_argument("--no-default", action="store_true", help="skip the shipped default policy")
    ap.add_argument(
        "--pool", type=int, action="append", help="runs per baseline (repeatable; default 1 and 3)"
    )
    args = ap.parse_args(argv)
    try:
        if args.runs:
            folders = list(args.runs)
        elif args.scenario:
            folders = rerun(args.scenario, args.reruns, args.out, args.overrides)
        else:
            ap.error("give a scenario to rerun or --runs")
        policies: list[Path | None] = ([] if args.no_default else [None]) + list(args.policy)
        work = args.out / "baselines"
        result: list[Pairing] = []
        for pool in args.pool or [1, 3]:
            if len(folders) > pool:
                result += pairings(folders, policies, pool, work)
        observed = spread(folders, SPREAD_METRICS) if len(folders) >= 2 else {}
    except (GateInputError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in result:
        extra = f"  REGRESSION: {', '.join(p.regressions)}" if p.regressions else ""
        counts = ", ".join(f"{n} {v}" for v, n in p.counts.items() if n)
        print(
            f"{p.policy:<40} base={'+'.join(p.baseline):<28} run={p.run:<28} {p.verdict:<12} ({counts}){extra}"
        )
    summary: dict[str, dict[str, int]] = {}
    for p in result:
        key = f"{p.policy} pool={len(p.baseline)}"
        summary.setdefault(key, {}).setdefault(p.verdict, 0)
        summary[key][p.verdict] += 1
    print(json.dumps(summary, indent=1))
    if observed:
        print("run-to-run spread (sd of ln value across runs; compare with the policy's run_to_run_noise):")
        for metric, s in observed.items():
            print(f"  {metric:<20} median {s['median']:.1%}  max {s['max']:.1%}  ({s['steps']} steps)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spread.json").write_text(json.dumps(observed, indent=1) + "\n")
    (args.out / "aa.json").write_text(json.dumps([p.__dict__ for p in result], indent=1) + "\n")
    return 1 if any(p.regressions for p in result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
