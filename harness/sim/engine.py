"""Engine mode: run the modelled continuous-batching engine in (scaled) real time.

Why one asyncio task for the whole engine: a real engine is one loop of
iterations, and every running sequence gets its token at the end of the same
iteration; modelling it as per-request timers would lose exactly the coupling
(batch size slows everyone's ITL) that engine mode exists to show. Each
iteration: ``Scheduler.schedule`` → roofline step time → sleep until the
step's deadline → ``Scheduler.complete`` → hand each sampled token to its
sequence's sink (an HTTP stream, a gRPC stream, or nothing offline).

Deadlines are absolute (the next step starts when the last one was due to
end), so timer lateness does not accumulate; if the process falls more than
``RESYNC_NS`` behind (an overloaded CPU), it restarts the clock from now
rather than bursting steps to catch up.

``time_scale`` stretches wall time: 0.1 runs ten times slower than modelled
(useful where the client shares a small CPU), 1.0 is real time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from harness.sim.metrics import SimCounters
from harness.sim.roofline import EngineConfig, MemoryPlan, Roofline, plan_memory, step_cost
from harness.sim.scheduler import Scheduler, Seq

RESYNC_NS = 5_000_000
EARLY_NS = 100_000


class TokenSink(Protocol):
    """Receives a sequence's tokens as the engine samples them."""

    def tokens(self, generated: int, finished: bool, t_ns: int) -> None: ...


class ContextTooLong(ValueError):
    """A request longer than max_model_len (or than the whole KV cache); the message says by how much."""


def vram_gauges(plan: MemoryPlan) -> dict[str, float]:
    """Modelled VRAM by component, for ``tokenbench_sim_vram_<part>_bytes`` gauges."""
    return {
        "weights": plan.weights,
        "kv_cache": plan.kv_cache,
        "overhead": plan.overhead,
        "total": plan.total,
    }


def make_scheduler(cfg: EngineConfig, plan: MemoryPlan) -> Scheduler:
    return Scheduler(
        num_blocks=plan.num_blocks,
        block_size=cfg.block_size,
        max_num_seqs=cfg.max_num_seqs,
        token_budget=cfg.max_num_batched_tokens,
        reserve_full=cfg.reserve_full,
        chunked_prefill=cfg.chunked_prefill,
    )


class EngineLoop:
    """The engine of one sim server. Mutates ``counters`` (gauges) after every step."""

    def __init__(self, cfg: EngineConfig, counters: SimCounters, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale {time_scale}: must be > 0")
        self.cfg = cfg
        self.plan = plan_memory(cfg)
        self.roof = Roofline.of(cfg)
        self.sched = make_scheduler(cfg, self.plan)
        self.counters = counters
        self.time_scale = time_scale
        self.steps = 0
        self._wake: asyncio.Event | None = None
        counters.vram_bytes = vram_gauges(self.plan)
        counters.kv_cache_bytes_used = 0.0
        counters.engine_steps_total = 0

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Reject what a real server rejects up front (vLLM answers 400)."""
        limit = self.cfg.context_len
        if prompt_tokens + max_tokens > limit:
            raise ContextTooLong(
                f"this model's maximum context length is {limit} tokens; the request has "
                f"{prompt_tokens} prompt tokens and asks for {max_tokens} more"
            )

    def submit(self, prompt_tokens: int, target_tokens: int, sink: TokenSink | None) -> Seq:
        seq = Seq(prompt_tokens=max(prompt_tokens, 1), target_tokens=target_tokens, sink=sink)
        self.sched.add(seq)
        self._publish()
        if self._wake is not None:
            self._wake.set()
        return seq

    def abort(self, seq: Seq) -> None:
        self.sched.abort(seq)
        self._publish()

    def _publish(self) -> None:
        c, s = self.counters, self.sched
        c.running = len(s.running)
        c.waiting = len(s.waiting)
        c.kv_cache_usage = s.kv_usage
        c.preemptions_total = s.preemptions_total
        c.kv_cache_bytes_used = (s.num_blocks - s.free_blocks) * s.block_size * self.plan.kv_bytes_per_token

    async def run(self) -> None:
        """Iterate forever (cancel the task to stop)."""
        self._wake = asyncio.Event()
        start = time.monotonic_ns()
        while True:
            plan = self.sched.schedule() if not self.sched.idle else None
            if plan is None or not plan.items:
                self._publish()
                self._wake.clear()
                await self._wake.wait()
                start = time.monotonic_ns()
                continue
            self._publish()
            step_ns = int(self.roof.step_s(step_cost(plan.shape())) * 1e9 / self.time_scale)
            end = start + step_ns
            await _sleep_until(end)
            emitted = self.sched.complete(plan)
            self.steps += 1
            t = time.monotonic_ns()
            self.counters.engine_steps_total = self.steps
            self.counters.engine_lag_s_total += max(0, t - end) / 1e9
            for e in emitted:
                sink = e.seq.sink
                if sink is not None:
                    sink.tokens(e.seq.generated, e.finished, t)
            self._publish()
            now = time.monotonic_ns()
            start = end if now - end < RESYNC_NS else now


async def _sleep_until(deadline_ns: int) -> None:
    while True:
        left = deadline_ns - time.monotonic_ns()
        if left <= EARLY_NS:
            return
        await asyncio.sleep(left / 1e9)


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """A whole workload run on the model's clock, without a server."""

    elapsed_s: float
    output_tokens: int
    steps: int
    preemptions: int
    max_running: int

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s else 0.0


def simulate(cfg: EngineConfig, requests: list[tuple[int, int]], max_steps: int = 1_000_000) -> OfflineResult:
    """Run ``(prompt_tokens, output_tokens)`` requests, all queued at t=0, to completion.

    The same scheduler and roofline as the live engine, on a virtual clock:
    this is how the tests check the throughput-vs-batch shape in milliseconds.
    """
    plan = plan_memory(cfg)
    roof = Roofline.of(cfg)
    sched = make_scheduler(cfg, plan)
    for prompt, out in requests:
        if not sched.fits_ever(prompt, out):
            raise ContextTooLong(f"request of {prompt}+{out} tokens exceeds the KV cache ({plan.kv_tokens})")
        sched.add(Seq(prompt_tokens=prompt, target_tokens=out))
    clock = 0.0
    tokens = steps = max_running = 0
    while not sched.idle:
        if steps >= max_steps:
            raise RuntimeError(f"simulation did not finish in {max_steps} steps")
        step = sched.schedule()
        max_running = max(max_running, len(sched.running))
        clock += roof.step_s(step_cost(step.shape()))
        tokens += len(sched.complete(step))
        steps += 1
    return OfflineResult(clock, tokens, steps, sched.preemptions_total, max_running)
