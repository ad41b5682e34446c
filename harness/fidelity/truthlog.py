"""The truth server's write log: binary, so that logging 100k chunks/s costs almost nothing.

Why not the sim's CSV: a formatted line per chunk is a measurable share of
the truth server's per-write cost at 1,024 streams. Here a chunk is five
int64 appended to one ``array`` (request number, chunk number, write time,
due time, attempt time), and requests are four int64 plus their id string, all dumped once
at shutdown.

File layout: the line ``TBTRUTH1``, one JSON line
``{"requests": N, "chunks": M, "cpu_s": ..., "nice": ..., "ids": [...]}`` (ids in arrival order, once per
request, never per token), then little-endian int64 arrays: arrival ns (N),
prompt tokens (N), end ns (N, -1 if open), gone flag (N), and the chunk
table (M × 5). A chunk whose write time is 0 was never written (its
connection failed) and is dropped on reading. *Attempt* is when the server
first tried to send the chunk; *write* is when its last byte was handed to the
kernel. They differ only when the client's socket was full (the client was
not reading: backpressure, the client's delay, not the server's).

Reading gives the same ``RequestTruth`` the sim's log gives (chunk times are
the write times), so ``harness.fidelity.compare`` joins either; plus every
chunk's own lateness (attempt − due: how far the truth server fell behind its
schedule) and backpressure (write − attempt).
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from harness.sim.writelog import RequestTruth

MAGIC = b"TBTRUTH1\n"
ROW = 5  # request, chunk, write ns, due ns, attempt ns


class TruthLogError(ValueError):
    """A file that is not a (complete) truth log; the message names the file."""


class TruthLogWriter:
    """In-memory log the truth server appends to; ``dump`` writes it."""

    __slots__ = ("ids", "arrival", "prompt", "end", "gone", "chunks", "nice")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.arrival = array("q")
        self.prompt = array("q")
        self.end = array("q")
        self.gone = array("q")
        self.chunks = array("q")
        self.nice: int | None = None  # the server's scheduling niceness, for the report

    def arrival_of(self, request_id: str, t_ns: int, prompt_tokens: int) -> int:
        """Register a request; returns its number."""
        self.ids.append(request_id)
        self.arrival.append(t_ns)
        self.prompt.append(prompt_tokens)
        self.end.append(-1)
        self.gone.append(0)
        return len(self.ids) - 1

    def chunk(self, rid: int, index: int, due_ns: int, attempt_ns: int) -> int:
        """Reserve a chunk row whose bytes are queued (write time 0 until ``set_time``); returns its slot.

        (The hot path appends fully-sent rows itself: ``chunks.extend((rid, index, t, due, t))``.)
        """
        self.chunks.extend((rid, index, 0, due_ns, attempt_ns))
        return len(self.chunks) // ROW - 1

    def set_time(self, slot: int, t_ns: int) -> None:
        self.chunks[slot * ROW + 2] = t_ns

    def end_of(self, rid: int, t_ns: int, gone: bool = False) -> None:
        self.end[rid] = t_ns
        self.gone[rid] = 1 if gone else 0

    def dump(self, path: Path, cpu_s: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        header = {
            "requests": len(self.ids),
            "chunks": len(self.chunks) // ROW,
            "cpu_s": cpu_s,
            "nice": self.nice,
            "ids": self.ids,
        }
        with tmp.open("wb") as fh:
            fh.write(MAGIC)
            fh.write(orjson.dumps(header) + b"\n")
            for arr in (self.arrival, self.prompt, self.end, self.gone, self.chunks):
                if sys.byteorder != "little":
                    arr = array("q", arr)
                    arr.byteswap()
                arr.tofile(fh)
        tmp.replace(path)


@dataclass
class TruthLog:
    """A read truth log: per-request truth (sim-compatible) and per-chunk lateness."""

    requests: dict[str, RequestTruth]
    lateness_ns: np.ndarray  # attempt − due of every written chunk (the server's own lag)
    backpressure_ns: np.ndarray  # write − attempt (0 unless the client's socket was full)
    cpu_s: float | None = None  # the truth server's own CPU-seconds over its life
    nice: int | None = None  # its scheduling niceness


def read_truth_log(path: Path) -> TruthLog:
    """Parse a truth log into ``RequestTruth`` per request id (arrival order) and chunk lateness."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise TruthLogError(f"{path}: not a truth-server log (no {MAGIC.strip().decode()} line)")
    nl = data.index(b"\n", len(MAGIC))
    try:
        header = orjson.loads(data[len(MAGIC) : nl])
        n, m, ids = int(header["requests"]), int(header["chunks"]), list(header["ids"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise TruthLogError(f"{path}: bad header: {err}") from None
    body = np.frombuffer(data, dtype="<i8", offset=nl + 1)
    if body.size != 4 * n + ROW * m or len(ids) != n:
        raise TruthLogError(f"{path}: truncated ({body.size} int64 for {n} requests, {m} chunks)")
    arrival, prompt, end, gone = (body[k * n : (k + 1) * n] for k in range(4))
    chunks = body[4 * n :].reshape(m, ROW)
    chunks = chunks[chunks[:, 2] != 0]
    out: dict[str, RequestTruth] = {}
    by_rid: list[RequestTruth] = []
    for k in range(n):
        t = RequestTruth(
            request_id=ids[k],
            arrival_ns=int(arrival[k]),
            prompt_tokens=int(prompt[k]),
            api="completions",
            end_ns=int(end[k]) if end[k] >= 0 else None,
            outcome=("client_gone" if gone[k] else "ok") if end[k] >= 0 else "",
        )
        by_rid.append(t)
        out[ids[k]] = t
    order = np.lexsort((chunks[:, 1], chunks[:, 0]))
    for rid, _idx, t_ns, _due, _try in chunks[order].tolist():
        tr = by_rid[rid]
        tr.chunk_times_ns.append(t_ns)
        tr.chunk_tokens.append(1)
    cpu = header.get("cpu_s")
    nice = header.get("nice")
    lateness = (chunks[:, 4] - chunks[:, 3]).astype(np.int64)
    backpressure = (chunks[:, 2] - chunks[:, 4]).astype(np.int64)
    return TruthLog(
        out, lateness, backpressure, None if cpu is None else float(cpu), None if nice is None else int(nice)
    )
