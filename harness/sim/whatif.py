"""The GPU what-if's validation table: rerun every published case, print published, simulated, ratio.

Why a table and not a unit test per figure: users size hardware on engine
mode, so its error must be known per regime, and the honest way to know it is
to rerun results someone else measured, with the constants fitted on one set
of cases (``fit``) and judged on another (``heldout``). ``--write-bands``
turns the table into the band each (GPU class, regime) earned, in
``harness/hardware/data/bands.yaml``, which reports quote next to every
simulated figure. Run it as ``make bench-whatif`` or ``python -m harness.sim.whatif``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.dataset import DatasetError, length_pairs, read_dataset
from harness.hardware.calibration import (
    BANDS_FILE,
    CALIBRATION_FILE,
    CalibrationError,
    Case,
    load_cases,
    load_efficiencies,
    load_sources,
)
from harness.hardware.profiles import PROFILE_DIR, get_gpu, get_model
from harness.sim.engine import make_scheduler
from harness.sim.roofline import EngineConfig, Roofline, plan_memory, step_cost
from harness.sim.scheduler import Seq

TARGET = 1.25  # every case within x1.25 of its published figure


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A closed-loop run on the model's clock."""

    elapsed_s: float
    output_tokens: int
    mean_e2e_s: float
    mean_ttft_s: float
    mean_tpot_s: float

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s else 0.0


def closed_loop(cfg: EngineConfig, requests: list[tuple[int, int]], concurrency: int) -> LoadResult:
    """Keep ``concurrency`` requests in flight (a new one arrives when one finishes), like
    ``vllm bench serve --max-concurrency``; ``concurrency >= len(requests)`` is a drain."""
    plan = plan_memory(cfg)
    roof = Roofline.of(cfg)
    sched = make_scheduler(cfg, plan)
    pending = list(reversed(requests))
    start: dict[Seq, float] = {}  # keyed by the object (eq=False): ids are reused
    first: dict[Seq, float] = {}
    e2e, ttft, tpot = [], [], []
    clock, tokens, inflight = 0.0, 0, 0
    while pending or not sched.idle:
        while pending and inflight < concurrency:
            p, o = pending.pop()
            seq = Seq(prompt_tokens=p, target_tokens=o)
            start[seq] = clock
            sched.add(seq)
            inflight += 1
        step = sched.schedule()
        clock += roof.step_s(step_cost(step.shape()))
        for e in sched.complete(step):
            tokens += 1
            k = e.seq
            first.setdefault(k, clock)
            if e.finished:
                inflight -= 1
                e2e.append(clock - start[k])
                ttft.append(first[k] - start[k])
                if e.seq.target_tokens > 1:
                    tpot.append((clock - first[k]) / (e.seq.target_tokens - 1))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    return LoadResult(clock, tokens, mean(e2e), mean(ttft), mean(tpot))


def case_config(case: Case) -> EngineConfig:
    s = case.setup
    gpu = get_gpu(case.gpu)
    large = gpu.memory_bytes >= 70e9
    return EngineConfig(
        gpu=gpu,
        model=get_model(case.model),
        quantization=s.get("quantization", "none"),
        gpu_memory_utilization=s.get("gpu_memory_utilization", 0.9),
        max_num_seqs=s.get("max_num_seqs", 1024 if large else 256),
        max_num_batched_tokens=s.get("max_num_batched_tokens", 8192 if large else 2048),
        max_model_len=s.get("max_model_len"),
        tensor_parallel_size=s.get("tensor_parallel_size", 1),
        pipeline_parallel_size=s.get("pipeline_parallel_size", 1),
        chunked_prefill=s.get("chunked_prefill", True),
    )


def case_requests(case: Case) -> list[tuple[int, int]]:
    """The case's ``(input, output)`` lengths: fixed ones, or a JSONL length dataset replayed in
    order and cycled to ``requests`` (``setup.dataset``, relative to the profile data folder)."""
    s = case.setup
    n = int(s["requests"])
    if "dataset" not in s:
        return [(int(s["input"]), int(s["output"]))] * n
    path = Path(s["dataset"])
    path = path if path.is_absolute() else PROFILE_DIR / path
    try:
        pairs = length_pairs(path, read_dataset(path))
    except DatasetError as err:
        raise CalibrationError(f"cases.{case.key}.setup.dataset: {err}") from None
    return [pairs[i % len(pairs)] for i in range(n)]


def simulate_case(
    case: Case, cfg: EngineConfig | None = None, requests: list[tuple[int, int]] | None = None
) -> float:
    """The case's metric as engine mode computes it (``requests`` overrides the case's lengths)."""
    cfg = cfg or case_config(case)
    s = case.setup
    reqs = requests if requests is not None else case_requests(case)
    res = closed_loop(cfg, reqs, int(s["concurrency"]))
    if case.metric == "e2e_ms":
        return res.mean_e2e_s * 1000
    if case.metric == "tpot_ms":
        return res.mean_tpot_s * 1000
    if case.metric == "output_tok_s":
        return res.output_tok_s
    base = closed_loop(cfg, reqs[: int(s["baseline_requests"])], 1)
    return res.output_tok_s / base.output_tok_s


@dataclass(frozen=True, slots=True)
class Row:
    """One case rerun; ``alternatives``: its simulated figure under the ShareGPT sample's other
    assumptions (``ALTERNATIVES``), empty for cases whose lengths are published exactly."""

    case: Case
    simulated: float
    alternatives: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        return self.simulated / self.case.published

    @property
    def ratios(self) -> list[float]:
        return [self.ratio] + [a / self.case.published for a in self.alternatives]

    @property
    def within(self) -> bool:
        return 1 / TARGET <= self.ratio <= TARGET


# The ShareGPT sample's assumptions, varied: its output shape (sigma) and its mean output (the
# largest other published mean); see harness/hardware/sharegpt_lengths.py.
ALTERNATIVES: tuple[tuple[str, dict[str, float]], ...] = (
    ("sigma 0.8", {"sigma": 0.8}),
    ("sigma 1.2", {"sigma": 1.2}),
    ("mean out 203.1", {"mean_output": 203.1}),
)


def _alternatives(case: Case) -> tuple[float, ...]:
    """The case rerun on the ShareGPT sample drawn under each alternative (same seed and filter)."""
    from harness.hardware.sharegpt_lengths import SAMPLE_FILE, sample

    if case.setup.get("dataset") != SAMPLE_FILE.name:
        return ()
    n = int(case.setup["requests"])
    out = []
    for _, kw in ALTERNATIVES:
        pairs = sample(**kw)  # type: ignore[arg-type]
        out.append(simulate_case(case, requests=[pairs[i % len(pairs)] for i in range(n)]))
    return tuple(out)


def table(path: Path = CALIBRATION_FILE) -> list[Row]:
    return [Row(c, simulate_case(c), _alternatives(c)) for c in load_cases(path)]


def bands(rows: list[Row]) -> dict[str, dict[str, dict[str, float]]]:
    """Per GPU class and regime: the largest relative error any case showed, rounded up to 5 %.

    A case on the synthetic ShareGPT sample counts its worst ratio over the sample's
    alternatives too: a band must cover what the sample's assumptions could be hiding.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        klass = get_gpu(r.case.gpu).calibration_class
        err = max(max(x, 1 / x) for x in r.ratios) - 1
        cell = out.setdefault(klass, {}).setdefault(r.case.regime, {"band": 0.0, "cases": 0})
        cell["band"] = max(cell["band"], math.ceil(err * 20 - 1e-9) / 20)
        cell["cases"] += 1
    return out


def render(rows: list[Row]) -> str:
    lines = []
    for role, title in (("fit", "Cases used for fitting"), ("heldout", "Held-out cases (never fitted to)")):
        lines += [
            f"{title}:",
            f"  {'case':46} {'gpu':11} {'metric':16} {'published':>10} {'simulated':>10} {'ratio':>6}",
        ]
        for r in (r for r in rows if r.case.role == role):
            mark = "" if r.within else f"  MISS (target x{TARGET})"
            spread = f"  (range {min(r.ratios):.3f}-{max(r.ratios):.3f})"
            lines.append(
                f"  {r.case.key:46} {r.case.gpu:11} {r.case.metric:16} {r.case.published:10.2f} "
                f"{r.simulated:10.2f} {r.ratio:6.3f}{mark}{spread if r.alternatives else ''}"
            )
        lines.append("")
    misses = [r.case.key for r in rows if not r.within]
    lines.append(
        f"{len(rows) - len(misses)}/{len(rows)} within x{TARGET}"
        + (f"; missed: {', '.join(misses)}" if misses else "")
    )
    if any(r.alternatives for r in rows):
        lines.append(
            "(range a-b: the ratio with the ShareGPT sample's assumptions varied: "
            + ", ".join(name for name, _ in ALTERNATIVES)
            + " (harness/hardware/sharegpt_lengths.py); bands.yaml counts the worst)"
        )
    return "\n".join(lines)


def constants_text(path: Path = CALIBRATION_FILE) -> str:
    """The constants per GPU class and the sources they came from (the notes say which case fixed which)."""
    sources = load_sources(path)
    lines = [f"Constants per GPU class ({path.name}: fit and check sources; the note on each says which)"]
    for key, e in load_efficiencies(path).items():
        lines.append(
            f"  {key:13} bw decode/prefill {e.decode_bw:.2f}/{e.prefill_bw:.2f}  flops decode/prefill "
            f"{e.decode_flops:.2f}/{e.prefill_flops:.2f}  step {e.step_fixed_s * 1000:.2f} ms + "
            f"{e.step_per_seq_s * 1000:.3f} ms/seq  dequant {e.dequant}"
        )
        lines += [f"  {'':13} source: {url}" for url in sources.get(key, [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sim.whatif", description=__doc__.splitlines()[0])
    p.add_argument("--write-bands", action="store_true", help=f"rewrite {BANDS_FILE.name} from this table")
    a = p.parse_args(argv)
    rows = table()
    print(render(rows))
    print()
    print(constants_text())
    if a.write_bands:
        body = {"bands": bands(rows)}
        header = "# Written by `python -m harness.sim.whatif --write-bands` from calibration.yaml's cases; do not edit.\n"
        BANDS_FILE.write_text(header + yaml.safe_dump(body, sort_keys=True), encoding="utf-8")
        print(f"wrote {BANDS_FILE}")
    return 0 if all(r.within for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
