"""Compare what the harness measured with what the sim really did, for one step.

Why a pure function over records and truth: the comparison is the claim the
benchmark makes ("the harness adds X ms"), so it must be testable without
running any load. Records come from the harness's own Parquet file, truth from
the sim's write log; they are joined on the ``X-Request-Id`` the load layer
sends (``harness.load.collector.request_key``).

Two kinds of error are reported for TTFT and ITL:

* *distribution* differences: harness p50/p99 minus truth p50/p99 over the
  same requests (what a user comparing reports would see);
* *paired* errors: per request (TTFT) or per gap (ITL), harness minus truth,
  summarised by p50/p99 of the absolute error (what the client adds to each
  sample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.heldload import held_fraction
from harness.load.collector import request_key
from harness.sim.writelog import RequestTruth

NS_PER_MS = 1e6


@dataclass(frozen=True)
class Joined:
    """Measured, successful records paired with their truth, plus what failed to pair."""

    pairs: list[tuple[dict[str, Any], RequestTruth]]
    records: int
    measured: int
    ok: int
    unmatched_records: int
    truth_total: int


def join(rows: Sequence[Mapping[str, Any]], truth: Mapping[str, RequestTruth]) -> Joined:
    """Pair every measured, successful record with the sim's truth for the same request id."""
    pairs: list[tuple[dict[str, Any], RequestTruth]] = []
    measured = ok = unmatched = 0
    for row in rows:
        if row.get("warmup"):
            continue
        measured += 1
        if row.get("error_class") is not None:
            continue
        ok += 1
        t = truth.get(request_key(str(row["step_id"]), int(row["request_id"])))
        if t is None:
            unmatched += 1
            continue
        pairs.append((dict(row), t))
    return Joined(pairs, len(rows), measured, ok, unmatched, len(truth))


def _q(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _pq(values: np.ndarray) -> dict[str, float | None]:
    return {"p50": _q(values, 50), "p99": _q(values, 99)}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def latency_block(harness_ms: np.ndarray, truth_ms: np.ndarray) -> dict[str, Any]:
    """Harness and truth p50/p99, their difference, and the paired absolute error (same-length arrays)."""
    h, t = _pq(harness_ms), _pq(truth_ms)
    err = np.abs(harness_ms - truth_ms) if harness_ms.size == truth_ms.size else np.empty(0)
    return {
        "harness": h,
        "truth": t,
        "diff": {"p50": _diff(h["p50"], t["p50"]), "p99": _diff(h["p99"], t["p99"])},
        "abs_error": {**_pq(err), "max": float(err.max()) if err.size else None},
        "samples": int(harness_ms.size),
    }


def ttft_arrays(pairs: list[tuple[dict[str, Any], RequestTruth]]) -> tuple[np.ndarray, np.ndarray]:
    """Harness TTFT (first token − scheduled) and truth TTFT (first write − arrival), in ms."""
    h: list[float] = []
    t: list[float] = []
    for row, truth in pairs:
        first, ttft = row.get("first_token_ns"), truth.ttft_ns
        if first is None or ttft is None:
            continue
        h.append((first - row["scheduled_ns"]) / NS_PER_MS)
        t.append(ttft / NS_PER_MS)
    return np.asarray(h, dtype=float), np.asarray(t, dtype=float)


def ttft_split(pairs: list[tuple[dict[str, Any], RequestTruth]]) -> dict[str, Any]:
    """Where a TTFT error comes from: request transit (sent → server read) and first-token receipt (write → stamp).

    The first part includes the client's request building and the server's
    accept/read lag; the second is the client's read-stamp lag. Their sum is
    the closed-loop TTFT error, so a reader can tell client from server.
    """
    send: list[float] = []
    recv: list[float] = []
    for row, truth in pairs:
        first, tfirst = row.get("first_token_ns"), truth.first_token_ns
        if truth.arrival_ns is None or first is None or tfirst is None:
            continue
        send.append((truth.arrival_ns - row["sent_ns"]) / NS_PER_MS)
        recv.append((first - tfirst) / NS_PER_MS)
    return {
        "request_transit_ms": _pq(np.asarray(send, dtype=float)),
        "first_token_receipt_ms": _pq(np.asarray(recv, dtype=float)),
    }


def itl_arrays(pairs: list[tuple[dict[str, Any], RequestTruth]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-gap ITL pairs (ms) for requests whose chunk counts agree; also how many requests disagreed.

    Gaps are compared chunk gap to chunk gap (the sim sends one token per chunk
    in this benchmark), so a harness that merged or split chunks shows up as a
    count mismatch instead of a silently shifted distribution.
    """
    h: list[np.ndarray] = []
    t: list[np.ndarray] = []
    mismatched = 0
    for row, truth in pairs:
        ht = row.get("chunk_times_ns")
        ht = [] if ht is None else list(ht)
        tt = truth.chunk_times_ns
        if len(ht) != len(tt):
            mismatched += 1
            continue
        if len(ht) < 2:
            continue
        h.append(np.diff(np.asarray(ht, dtype=np.int64)) / NS_PER_MS)
        t.append(np.diff(np.asarray(tt, dtype=np.int64)) / NS_PER_MS)
    cat = lambda parts: np.concatenate(parts) if parts else np.empty(0)  # noqa: E731
    return cat(h), cat(t), mismatched


def stamp_lag(pairs: list[tuple[dict[str, Any], RequestTruth]]) -> dict[str, Any]:
    """Per-chunk stamp lag: the client's stamp of a chunk minus the real write time of its *last token*.

    Why per token and not per chunk: a read that coalesced two events gives
    both the stamp of that read, and the client may count tokens per event
    differently from the server's chunking; joining on the token index
    (cumulative client tokens − 1 → the truth chunk that carried that token)
    pairs every stamp with the write it can have seen, whatever the chunking.
    It needs no assumption about the server keeping its schedule, so it stays
    valid when the truth side is late. Requests whose token totals disagree
    are skipped (they are counted in ``tokens``). ``first`` is the first
    token only (the receipt part of the TTFT error).
    """
    lags: list[np.ndarray] = []
    first: list[float] = []
    for row, truth in pairs:
        ht = row.get("chunk_times_ns")
        hk = row.get("chunk_tokens")
        if ht is None or hk is None or len(ht) == 0 or len(ht) != len(hk):
            continue
        tt = np.asarray(truth.chunk_times_ns, dtype=np.int64)
        tk = np.asarray(truth.chunk_tokens, dtype=np.int64)
        if tt.size == 0:
            continue
        token_write = np.repeat(tt, tk)
        last_token = np.cumsum(np.asarray(hk, dtype=np.int64)) - 1
        if last_token[-1] != token_write.size - 1 or last_token.min() < 0:
            continue
        lag = (np.asarray(ht, dtype=np.int64) - token_write[last_token]) / NS_PER_MS
        lags.append(lag)
        first.append(float(lag[0]))
    allv = np.concatenate(lags) if lags else np.empty(0)
    f = np.asarray(first, dtype=float)

    def block(v: np.ndarray) -> dict[str, Any]:
        return {**_pq(v), "max": float(v.max()) if v.size else None, "samples": int(v.size)}

    return {"all_ms": block(allv), "first_ms": block(f), "requests": len(lags)}


def server_token_rate(truth: Mapping[str, RequestTruth], window: tuple[int, int]) -> float | None:
    """Tokens the server really wrote per second inside ``window`` (the real size of the load)."""
    start, stop = window
    if stop <= start:
        return None
    tokens = 0
    for t in truth.values():
        if not t.chunk_times_ns:
            continue
        times = np.asarray(t.chunk_times_ns, dtype=np.int64)
        inside = (times >= start) & (times < stop)
        tokens += int(np.asarray(t.chunk_tokens, dtype=np.int64)[inside].sum())
    return tokens / ((stop - start) / 1e9)


def arrivals(times_ns: Sequence[int]) -> dict[str, float | int | None]:
    """Achieved rate ((N−1)/span) and coefficient of variation of the gaps of a set of arrival times."""
    t = np.sort(np.asarray(list(times_ns), dtype=np.int64))
    if t.size < 2:
        return {"count": int(t.size), "rate": None, "cv": None}
    gaps = np.diff(t).astype(float)
    span = float(t[-1] - t[0])
    rate = (t.size - 1) / (span / 1e9) if span > 0 else None
    cv = float(gaps.std() / gaps.mean()) if t.size >= 3 and gaps.mean() > 0 else None
    return {"count": int(t.size), "rate": rate, "cv": cv}


def server_in_flight(truth: Mapping[str, RequestTruth], window: tuple[int, int]) -> float | None:
    """Time-average number of requests the *server* had open (arrival → end) over ``window``."""
    start, stop = window
    if stop <= start:
        return None
    total = 0
    for t in truth.values():
        if t.arrival_ns is None:
            continue
        end = t.end_ns if t.end_ns is not None else stop
        lo, hi = max(t.arrival_ns, start), min(end, stop)
        if hi > lo:
            total += hi - lo
    return total / (stop - start)


def tokens_block(pairs: list[tuple[dict[str, Any], RequestTruth]]) -> dict[str, Any]:
    """Tokens the harness counted (server usage, and its own chunk count) against tokens the sim sent."""
    usage = client = sent = 0
    wrong = 0
    for row, truth in pairs:
        u = int(row.get("output_tokens") or 0)
        c = int(row.get("client_output_tokens") or 0)
        s = truth.output_tokens
        usage += u
        client += c
        sent += s
        if u != s or c != s:
            wrong += 1
    return {
        "harness_usage": usage,
        "harness_counted": client,
        "truth_sent": sent,
        "requests_wrong": wrong,
        "exact": usage == sent and client == sent and wrong == 0,
    }


def _send_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"sent_ns": [r.get("sent_ns") for r in rows], "end_ns": [r.get("end_ns") for r in rows]}
    )


def compare_step(
    rows: Sequence[Mapping[str, Any]],
    truth: Mapping[str, RequestTruth],
    *,
    kind: str,
    target: float,
) -> dict[str, Any]:
    """Everything the benchmark says about one step that follows from records and truth alone."""
    j = join(rows, truth)
    measured = [r for r in rows if not r.get("warmup")]
    sched = [int(r["scheduled_ns"]) for r in measured]
    window = (min(sched), max(sched)) if sched else (0, 0)
    ttft_h, ttft_t = ttft_arrays(j.pairs)
    itl_h, itl_t, itl_mismatch = itl_arrays(j.pairs)
    truth_arrivals = [t.arrival_ns for _, t in j.pairs if t.arrival_ns is not None]
    harness_arr = arrivals(sched)
    truth_arr = arrivals(truth_arrivals)
    in_flight = server_in_flight(truth, window)
    rate_err = None
    if kind == "rate" and truth_arr["rate"] is not None:
        rate_err = 100.0 * (float(truth_arr["rate"]) - target) / target
    return {
        "requests": {
            "records": j.records,
            "measured": j.measured,
            "ok": j.ok,
            "joined": len(j.pairs),
            "unmatched_records": j.unmatched_records,
            "truth_requests": j.truth_total,
            "itl_chunk_count_mismatch": itl_mismatch,
        },
        "ttft_ms": latency_block(ttft_h, ttft_t),
        "ttft_error_split": ttft_split(j.pairs),
        "itl_ms": latency_block(itl_h, itl_t),
        "stamp_lag": stamp_lag(j.pairs),
        "tokens": tokens_block(j.pairs),
        "arrivals": {
            "target_rate": target if kind == "rate" else None,
            "harness": harness_arr,
            "truth": truth_arr,
            "rate_error_pct": rate_err,
        },
        "server_in_flight": {
            "mean": in_flight,
            "fraction_of_target": in_flight / target
            if kind == "concurrency" and in_flight is not None
            else None,
            "window_s": (window[1] - window[0]) / 1e9,
            # The same share from the records alone (what every run's report shows as "users held").
            "client_held_fraction": held_fraction(
                _send_frame(measured), target, _send_frame([r for r in rows if r.get("warmup")])
            )
            if kind == "concurrency"
            else None,
        },
        "server_tokens_per_s": server_token_rate(truth, window),
    }
