"""When each chunk of a simulated stream is written: the sim's ground truth.

Why absolute scheduling: a stream that sleeps ``itl`` after each write drifts
by every wake-up's lateness, so after 128 tokens the "known" ITL is no longer
known. Here chunk *i* is due at ``arrival + ttft + offset(i)``, computed up
front; a late wake-up delays one chunk, never the ones after it.

Chunking: the first chunk carries one token (prefill yields one token), later
chunks carry ``tokens_per_chunk`` tokens each, as speculative decoding does.

Jitter adds a seeded uniform ``[0, jitter)`` delay to each chunk's due time
independently (it does not accumulate). A periodic stall pushes chunk
``stall_every``, ``2*stall_every``, ... and everything after it back by
``stall``, so stalls do accumulate, as a real decode hiccup would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MS = 1_000_000


@dataclass(frozen=True, slots=True)
class ExactTiming:
    """The exact-mode knobs, all in nanoseconds."""

    ttft_ns: int
    itl_ns: int
    tokens_per_chunk: int = 1
    jitter_ns: int = 0
    stall_every: int = 0
    stall_ns: int = 0

    def __post_init__(self) -> None:
        if self.ttft_ns < 0 or self.itl_ns < 0:
            raise ValueError(f"ttft and itl must be >= 0 (got {self.ttft_ns} ns, {self.itl_ns} ns)")
        if self.tokens_per_chunk < 1:
            raise ValueError(f"tokens_per_chunk must be >= 1 (got {self.tokens_per_chunk})")
        if self.jitter_ns < 0 or self.stall_every < 0 or self.stall_ns < 0:
            raise ValueError("jitter, stall_every and stall must be >= 0")


def chunk_sizes(n_tokens: int, tokens_per_chunk: int) -> list[int]:
    """Tokens in each chunk: 1 first, then ``tokens_per_chunk`` until ``n_tokens`` are out."""
    if n_tokens <= 0:
        return []
    sizes = [1]
    left = n_tokens - 1
    while left > 0:
        take = min(tokens_per_chunk, left)
        sizes.append(take)
        left -= take
    return sizes


def chunk_offsets(
    timing: ExactTiming,
    n_chunks: int,
    rng: random.Random,
    extra_stall_at: int | None = None,
    extra_stall_ns: int = 0,
) -> list[int]:
    """Due time of each chunk in ns after arrival, non-decreasing.

    ``extra_stall_at``/``extra_stall_ns`` inject one fault stall before that chunk.
    """
    offsets: list[int] = []
    shift = 0
    prev = 0
    for i in range(n_chunks):
        if timing.stall_every and i and i % timing.stall_every == 0:
            shift += timing.stall_ns
        if extra_stall_at is not None and i == extra_stall_at:
            shift += extra_stall_ns
        due = timing.ttft_ns + i * timing.itl_ns + shift
        if timing.jitter_ns:
            due += int(rng.random() * timing.jitter_ns)
        prev = max(prev, due)
        offsets.append(prev)
    return offsets


def natural_length(rng: random.Random, max_tokens: int, min_tokens: int) -> int:
    """A seeded "the model hit EOS here" length in ``[max(min_tokens, 1), max_tokens]``."""
    low = max(1, min(min_tokens, max_tokens))
    return rng.randint(low, max(low, max_tokens))
