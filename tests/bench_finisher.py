"""Micro-benchmark of the Finisher's per-stream work: µs per output token (not a test; run it by hand).

Why: at 1,024 streams the client's post-processing of finished streams (SSE
split, JSON decode, interpretation) took over a third of the Locust process's
CPU. This times exactly that path on the bytes the fidelity benchmark's truth
server sends (``harness.fidelity.truthsse.Shape``: usage + continuous usage,
one token per event), fed as the server writes them (one HTTP chunk per read)
with every ``--coalesce``-th read carrying two chunks.

    PYTHONPATH=$PWD /work/main/.venv/bin/python -m tests.bench_finisher [--tokens 128] [--repeat 400]

(``PYTHONPATH`` may name a checkout of an older commit, to compare.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.fidelity.truthsse import Shape
from harness.load.httpstream import Outcome
from harness.load.prompts import read_prompts
from harness.load.recordbuild import build_record
from harness.load.sseframe import SseSplitter
from harness.protocols.registry import get_protocol
from tests.load_plans import sim_plan


def chunk_payloads(tokens: int) -> list[bytes]:
    """The SSE bytes of each HTTP chunk of one response (chunked framing removed), in write order."""
    shape = Shape(b'"bench-model"', 1_700_000_000, 128, tokens, usage=True, continuous=True)
    oid = b"cmpl-" + b"0" * 32
    out: list[bytes] = []
    for pieces in shape.parts:
        frame = oid.join(pieces)
        size_hex, _, rest = frame.partition(b"\r\n")
        out.append(rest[: int(size_hex, 16)])
    return out


def reads_of(payloads: list[bytes], coalesce: int) -> list[bytes]:
    """One read per chunk, except that every ``coalesce``-th read also carries the next chunk."""
    reads: list[bytes] = []
    i = 0
    while i < len(payloads):
        if coalesce and len(reads) % coalesce == coalesce - 1 and i + 1 < len(payloads):
            reads.append(payloads[i] + payloads[i + 1])
            i += 2
        else:
            reads.append(payloads[i])
            i += 1
    return reads


def bench(tokens: int, repeat: int, coalesce: int) -> dict[str, float]:
    """Best-of-3 µs per token: feeding; split + ``read_stream``; that plus ``build_record`` (the Finisher's share)."""
    reads = reads_of(chunk_payloads(tokens), coalesce)
    spec = get_protocol("completions")
    with tempfile.TemporaryDirectory() as tmp:
        plan = sim_plan(Path(tmp), output_tokens=tokens, requests=repeat)
        prompt = read_prompts(Path(plan.prompts_path))[0]
    best_feed = best_post = best_finish = float("inf")
    for _ in range(3):
        feed_s = post_s = finish_s = 0.0
        for i in range(repeat):
            t0 = time.perf_counter()
            sp = SseSplitter()
            for k, data in enumerate(reads):
                sp.feed(data, 1_000_000 * (k + 1))
            t1 = time.perf_counter()
            sp.close()
            # as HttpWire.unpack hands them over (before SseEvents: the events list)
            res = spec.read_stream(sp.stream() if hasattr(sp, "stream") else sp.events)
            _ = sp.coalesced
            t2 = time.perf_counter()
            outcome = Outcome(200, 0, 10**12, sp, body_bytes=sp.size)
            kw = {"request_id": i, "worker": 0, "scheduled_ns": 0, "warmup": False}
            rec = build_record(plan, **kw, spec=prompt, outcome=outcome, result=res)
            t3 = time.perf_counter()
            feed_s += t1 - t0
            post_s += t2 - t1
            finish_s += t3 - t1
        best_feed = min(best_feed, feed_s)
        best_post = min(best_post, post_s)
        best_finish = min(best_finish, finish_s)
    assert res.error is None and res.completion_tokens == tokens and sum(res.chunk_tokens) == tokens, res
    assert rec.error_class is None and rec.output_tokens == tokens, rec
    per = 1e6 / (repeat * tokens)
    return {
        "feed_us_per_token": best_feed * per,
        "post_us_per_token": best_post * per,
        "finish_us_per_token": best_finish * per,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=400)
    ap.add_argument("--coalesce", type=int, default=8, help="every n-th read carries two chunks (0: none)")
    args = ap.parse_args()
    out = bench(args.tokens, args.repeat, args.coalesce)
    print(" ".join(f"{k}={v:.3f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
