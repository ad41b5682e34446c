"""``python -m harness.sim.selfbench``: how many tokens/s one sim process can stream.

Why a separate minimal client: the point is the sim's ceiling, not a client's,
so the client here only counts token events in raw bytes (no JSON, no HTTP
library) over keep-alive connections. The sim is pinned to one core and the
client to another where the machine has two, and the figure printed is tokens
per second of wall time plus tokens per CPU-second the sim itself spent
(measured from /proc via psutil), the number that says whether the sim could
be a bottleneck. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import subprocess
import sys
import time

import httpx
import psutil

REQUEST = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"


class _Stream(asyncio.Protocol):
    """One keep-alive connection issuing streaming requests back to back."""

    def __init__(self, body: bytes, deadline: float, counts: list[int], done: asyncio.Future[None]) -> None:
        self.req = REQUEST % (len(body), body)
        self.deadline = deadline
        self.counts = counts
        self.done = done
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.req)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.tail + data
        self.counts[0] += buf.count(b'"text":"')
        self.tail = buf[-16:]
        if b"0\r\n\r\n" in buf[-8:]:
            self.counts[1] += 1
            self.tail = b""
            if time.monotonic() < self.deadline and self.transport is not None:
                self.transport.write(self.req)
            elif self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _drive(port: int, streams: int, seconds: float, tokens: int) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    body = b'{"prompt":"a b c","max_tokens":%d,"ignore_eos":true,"stream":true}' % tokens
    counts = [0, 0]
    deadline = time.monotonic() + seconds
    dones = []
    for _ in range(streams):
        fut: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda f=fut: _Stream(body, deadline, counts, f), "127.0.0.1", port)
        dones.append(fut)
    await asyncio.wait_for(asyncio.gather(*dones), timeout=seconds + 60)
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sim.selfbench")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--itl-ms", type=float, default=1.0)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument(
        "--sim-args",
        default="",
        help="extra sim flags, e.g. '--mode engine --gpu h100-80gb --model-profile mistral-7b'",
    )
    a = p.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "harness.sim",
        "--port",
        str(port),
        "--ttft-ms",
        str(a.ttft_ms),
        "--itl-ms",
        str(a.itl_ms),
        *shlex.split(a.sim_args),
    ]
    two_cores = (os.cpu_count() or 1) >= 2
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        sim = psutil.Process(proc.pid)
        if two_cores:
            sim.cpu_affinity([0])
            psutil.Process().cpu_affinity([1])
        cpu0 = sum(sim.cpu_times()[:2])
        t0 = time.monotonic()
        try:
            import uvloop

            toks, reqs = uvloop.run(_drive(port, a.streams, a.seconds, a.tokens))
        except ImportError:
            toks, reqs = asyncio.run(_drive(port, a.streams, a.seconds, a.tokens))
        wall = time.monotonic() - t0
        cpu = sum(sim.cpu_times()[:2]) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    print(
        f"streams={a.streams} itl_ms={a.itl_ms} requests={reqs} tokens={toks} wall_s={wall:.2f} "
        f"tokens_per_s={toks / wall:,.0f} sim_cpu_s={cpu:.2f} "
        f"tokens_per_sim_cpu_s={toks / max(cpu, 1e-9):,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
