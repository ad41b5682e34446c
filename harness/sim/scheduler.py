"""The engine mode's continuous-batching scheduler, as pure state (no clock, no I/O).

Why pure: the interesting behaviour (queueing, chunked prefill, preemption,
throughput against batch size) must be testable in milliseconds, without a
server; the asyncio driver in ``engine.py`` just calls ``schedule`` and
``complete`` once per modelled iteration.

The policy follows vLLM's v1 scheduler:

* every sequence has ``total`` tokens (prompt + generated) and ``computed``
  ones; a step computes ``total - computed`` of them, capped by the step's
  token budget (``max_num_batched_tokens``): that is chunked prefill, and a
  decoding sequence simply has one token to compute;
* when a step leaves a sequence fully computed it samples one new token;
* running sequences go first, in admission order; one that needs a KV block
  when none is free preempts the newest running sequence (recompute: its
  blocks are freed and it re-queues at the front, keeping its output so far);
* waiting sequences are admitted in order while ``max_num_seqs`` and free
  blocks allow, never in a step that preempted.

With ``reserve_full`` (TGI's router) a sequence reserves blocks for its whole
prompt + output at admission, so it queues longer but is never preempted.

With ``chunked_prefill=False`` (vLLM's V0 scheduler without
``--enable-chunked-prefill``, as in the v0.6 results the what-if is checked
against) prefills are never mixed into decode steps: while waiting sequences fit,
a step runs only whole prompts (the running ones pause), else a step decodes
every running sequence. Prefill and decode then cannot overlap compute with the
weight stream, which is why it is slower at high load.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True)
class Seq:
    """One request inside the engine. ``sink`` is whatever the driver streams tokens to."""

    prompt_tokens: int
    target_tokens: int
    sink: Any = None
    generated: int = 0
    computed: int = 0
    blocks: int = 0
    preemptions: int = 0
    done: bool = False

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass(slots=True)
class Scheduled:
    seq: Seq
    tokens: int
    context: int


@dataclass(slots=True)
class StepPlan:
    """One iteration: what runs, and who was preempted to make room."""

    items: list[Scheduled] = field(default_factory=list)
    preempted: list[Seq] = field(default_factory=list)

    def shape(self) -> list[tuple[int, int]]:
        return [(s.tokens, s.context) for s in self.items]


@dataclass(slots=True)
class Emitted:
    seq: Seq
    finished: bool


class Scheduler:
    """Waiting queue, running batch and the KV block pool."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        token_budget: int,
        reserve_full: bool = False,
        chunked_prefill: bool = True,
    ) -> None:
        if num_blocks < 1 or block_size < 1 or max_num_seqs < 1 or token_budget < 1:
            raise ValueError("num_blocks, block_size, max_num_seqs and token_budget must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.token_budget = token_budget
        self.reserve_full = reserve_full
        self.chunked_prefill = chunked_prefill
        self.free_blocks = num_blocks
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.preemptions_total = 0

    # queries ---------------------------------------------------------------
    @property
    def kv_usage(self) -> float:
        return (self.num_blocks - self.free_blocks) / self.num_blocks

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def fits_ever(self, prompt_tokens: int, target_tokens: int) -> bool:
        """Whether a request could run alone on an empty cache (else it would wait forever)."""
        return self.blocks_for(prompt_tokens + target_tokens) <= self.num_blocks

    # mutations ---------------------------------------------------------------
    def add(self, seq: Seq) -> None:
        if seq.target_tokens < 1:
            raise ValueError(f"target_tokens must be >= 1, got {seq.target_tokens}")
        self.waiting.append(seq)

    def abort(self, seq: Seq) -> None:
        """The client went away: drop the sequence wherever it is and free its blocks."""
        if seq.done:
            return
        seq.done = True
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self._free(seq)

    def _free(self, seq: Seq) -> None:
        self.free_blocks += seq.blocks
        seq.blocks = 0

    def _preempt(self, seq: Seq, plan: StepPlan) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.computed = 0
        seq.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)

    def schedule(self) -> StepPlan:
        """Pick this iteration's work; allocates the KV blocks it needs."""
        plan = StepPlan()
        budget = self.token_budget
        if not self.chunked_prefill:
            self._admit(plan, budget, whole=True)
            if plan.items:
                return plan  # a prefill-only step: the running sequences wait for the next one
        # Preemption only ever removes the tail, so index i keeps pointing at the same sequence.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.total - seq.computed, budget)
            need = self.blocks_for(seq.computed + n) - seq.blocks
            while need > self.free_blocks and i < len(self.running):
                self._preempt(self.running[-1], plan)
            if i >= len(self.running):
                break  # it preempted itself: nothing older is left to make room for
            seq.blocks += max(need, 0)
            self.free_blocks -= max(need, 0)
            plan.items.append(Scheduled(seq, n, seq.computed))
            budget -= n
            i += 1
        if plan.preempted or not self.chunked_prefill:
            return plan
        self._admit(plan, budget, whole=False)
        return plan

    def _admit(self, plan: StepPlan, budget: int, whole: bool) -> None:
        """Admit waiting sequences in order; ``whole``: only if the entire prompt fits the budget."""
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            left = seq.total - seq.computed
            if whole and left > budget:
                break
            n = min(left, budget)
            reserve = seq.prompt_tokens + seq.target_tokens if self.reserve_full else seq.computed + n
            need = self.blocks_for(reserve) - seq.blocks
            if need > self.free_blocks:
                break
            self.waiting.popleft()
            seq.blocks += need
            self.free_blocks -= need
            self.running.append(seq)
            plan.items.append(Scheduled(seq, n, seq.computed))
            budget -= n

    def complete(self, plan: StepPlan) -> list[Emitted]:
        """Apply a finished step: advance computed tokens, sample, retire finished sequences."""
        out: list[Emitted] = []
        for item in plan.items:
            seq = item.seq
            if seq.done:
                continue  # aborted while the step ran
            seq.computed += item.tokens
            if seq.computed < seq.total:
                continue  # a prefill chunk; more to come
            seq.generated += 1
            finished = seq.generated >= seq.target_tokens
            if finished:
                seq.done = True
                self.running.remove(seq)
                self._free(seq)
            out.append(Emitted(seq, finished))
        return out
