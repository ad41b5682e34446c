"""The server's own clock beside the client's: a self-check for every step against a real server.

Why: a client-side benchmark cannot tell on its own whether a high TTFT is the
server's or its own (a starved event loop, a stolen core). A server that
exports latency histograms (vLLM's ``vllm:time_to_first_token_seconds`` ...,
TGI's ``tgi_request_*``) saw the same requests on its clock. When the
client's TTFT p50 lies above the server's p50 bucket by more than the
expected network time, the extra time was spent between the server's clock
and the client's: the client (or the path to it) is slow, not the server.

How:

* The metric per role (``ttft``, ``itl``, ``e2e``, ``queue``) is the backend
  spec's (``BackendSpec.server_histograms``); nothing here knows a name.
* ``/metrics`` is scraped just before the step's load starts and just after
  the load generator exits. Prometheus histograms are cumulative, so the
  step's distribution is ``end - start`` per bucket (label sets, e.g.
  ``engine``/``model_name``, summed).
* Why the whole step and not only its measured (post-warm-up) window: a server
  histogram counts a request when it *finishes*, so any cut while requests are
  in flight assigns the overlapping ones differently from the client, which
  selects by *scheduled* time. The step's edges are the only moments with no
  request in flight. The client side is therefore the same population: every
  successful request of the step, warm-up included (``client_count`` beside
  the server's ``count`` shows whether the two saw the same requests).
* A percentile of a histogram is only known to its bucket: the bucket that
  holds the rank ``q * count`` is reported as ``[lower_ms, upper_ms]``.
* The client's TTFT and E2E here run from the request's *send* (``sent_ns``),
  not its scheduled time: the server's clock starts when the request reaches
  it, so a client's send backlog (which the harness-health flags already
  report) is left out and what remains is comparable.
* Flag: the client's TTFT p50 above the server's p50 bucket's upper bound
  plus ``network_ms`` (``telemetry.server_clock_network_ms``, default 1 ms,
  loopback). The bucket's width is the resolution, so ``client > upper +
  network`` is exactly "exceeds the server's value by more than the bucket
  width plus the network time". Without a TTFT histogram (TGI) E2E is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from harness.results import ServerBucket, ServerClock, ServerClockRole

ROLES: tuple[str, ...] = ("ttft", "itl", "e2e", "queue")
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
DEFAULT_NETWORK_MS = 1.0
CHECK_ORDER: tuple[str, ...] = ("ttft", "e2e")


class ServerClockError(ValueError):
    """Histogram text that cannot be read as cumulative Prometheus buckets."""


@dataclass(frozen=True)
class Histogram:
    """One cumulative histogram, label sets summed: ascending upper bounds (last +Inf) and counts."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    @property
    def count(self) -> float:
        return self.counts[-1] if self.counts else 0.0


def parse_histograms(text: str, names: set[str] | frozenset[str]) -> dict[str, Histogram]:
    """The named histograms of an exposition text (``_bucket`` samples summed over label sets)."""
    sums: dict[str, dict[float, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name not in names or family.type != "histogram":
                continue
            buckets = sums.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_bucket") and "le" in sample.labels:
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise ServerClockError(f"not Prometheus text format: {err}") from None
    out: dict[str, Histogram] = {}
    for name, buckets in sums.items():
        bounds = tuple(sorted(buckets))
        if not bounds or not math.isinf(bounds[-1]):
            raise ServerClockError(f"histogram {name} has no +Inf bucket")
        out[name] = Histogram(bounds, tuple(buckets[b] for b in bounds))
    return out


def delta(end: Histogram, start: Histogram | None) -> Histogram | None:
    """``end - start`` per bucket; None when the buckets differ or a count fell (a restarted server)."""
    if start is None:
        return end
    if start.bounds != end.bounds:
        return None
    counts = tuple(e - s for e, s in zip(end.counts, start.counts, strict=True))
    if any(c < 0 for c in counts):
        return None
    return Histogram(end.bounds, counts)


def quantile_bucket(hist: Histogram, q: float) -> tuple[float, float] | None:
    """(lower, upper) bound of the bucket holding quantile ``q`` (upper may be +Inf); None if empty."""
    total = hist.count
    if total <= 0:
        return None
    rank = q * total
    for i, cumulative in enumerate(hist.counts):
        if cumulative >= rank and cumulative > 0:
            return (hist.bounds[i - 1] if i > 0 else 0.0), hist.bounds[i]
    return hist.bounds[-2] if len(hist.bounds) > 1 else 0.0, hist.bounds[-1]


def _bucket_ms(bounds: tuple[float, float] | None) -> ServerBucket | None:
    if bounds is None:
        return None
    low, high = bounds
    return ServerBucket(lower_ms=low * 1e3, upper_ms=None if math.isinf(high) else high * 1e3)


def client_samples_ms(records: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per role, the client's values (ms) over the step's successful requests, warm-up included."""
    from harness.metrics import itl_samples_ms

    ok = records[records["error_class"].isna()]
    sent = ok["sent_ns"].astype("float64").to_numpy()
    first = ok["first_token_ns"].astype("float64").to_numpy()
    end = ok["end_ns"].astype("float64").to_numpy()
    ttft = (first - sent) / 1e6
    return {
        "ttft": ttft[np.isfinite(ttft)],
        "e2e": ((end - sent) / 1e6)[np.isfinite(end - sent)],
        "itl": itl_samples_ms(ok, measured_only=False) if "chunk_times_ns" in ok.columns else np.array([]),
    }


def compare(
    start: dict[str, Histogram] | None,
    end: dict[str, Histogram],
    metrics: dict[str, str],
    records: pd.DataFrame,
    network_ms: float = DEFAULT_NETWORK_MS,
) -> ServerClock:
    """The ``server_clock`` block of a step: server buckets, client values and the verdict."""
    client = client_samples_ms(records)
    requests = int(records["error_class"].isna().sum())
    roles: dict[str, ServerClockRole] = {}
    notes: list[str] = []
    for role in ROLES:
        name = metrics.get(role)
        if name is None:
            continue
        if name not in end:
            notes.append(f"{role}: {name} not exposed")
            continue
        hist = delta(end[name], (start or {}).get(name))
        if hist is None:
            notes.append(f"{role}: {name} went backwards or changed buckets during the step (restarted?)")
            continue
        values = client.get(role)
        have = values is not None and values.size > 0
        roles[role] = ServerClockRole(
            metric=name,
            count=int(round(hist.count)),
            **{key: _bucket_ms(quantile_bucket(hist, q)) for key, q in QUANTILES},
            client_count=(requests if role != "itl" else int(values.size)) if have else None,
            **{
                f"client_{key}_ms": float(np.percentile(values, q * 100)) if have else None
                for key, q in QUANTILES
            },
        )
    result = ServerClock(roles=roles, network_ms=network_ms, notes=notes)
    return judge(result)


def judge(clock: ServerClock) -> ServerClock:
    """Set ``checked``, ``excess_ms``, ``flagged`` and ``reason`` from the first checkable role."""
    for role in CHECK_ORDER:
        entry = clock.roles.get(role)
        if entry is None or entry.p50 is None or entry.client_p50_ms is None:
            continue
        clock.checked = role
        if entry.p50.upper_ms is None:
            clock.notes.append(f"{role}: the server's p50 is in its +Inf bucket; no upper bound to compare")
            return clock
        clock.excess_ms = entry.client_p50_ms - entry.p50.upper_ms
        clock.flagged = clock.excess_ms > clock.network_ms
        if clock.flagged:
            clock.reason = (
                f"client {role.upper()} p50 {entry.client_p50_ms:.1f} ms is above the server's own p50 bucket "
                f"({entry.p50.lower_ms:g}-{entry.p50.upper_ms:g} ms) by {clock.excess_ms:.1f} ms, more than "
                f"the {clock.network_ms:g} ms network allowance: time lost between server and client"
            )
        if entry.client_count is not None and entry.count != entry.client_count:
            clock.notes.append(
                f"{role}: server counted {entry.count} requests, client {entry.client_count} "
                "(another client, or requests the server did not finish)"
            )
        return clock
    return clock


class StepClock:
    """Scrapes one server's histograms at a step's edges: :meth:`begin` before load, :meth:`end` after.

    Failures never raise into the run: a scrape that fails leaves a note and no verdict.
    """

    def __init__(self, url: str, metrics: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.metrics = dict(metrics)
        self._headers = dict(headers or {})
        self.start: dict[str, Histogram] | None = None
        self.finish: dict[str, Histogram] | None = None
        self.error: str | None = None

    def _scrape(self) -> dict[str, Histogram] | None:
        try:
            with httpx.Client(headers=self._headers, timeout=5.0) as client:
                resp = client.get(self.url)
            if resp.status_code != 200:
                self.error = f"/metrics answered HTTP {resp.status_code}"
                return None
            return parse_histograms(resp.text, set(self.metrics.values()))
        except httpx.HTTPError as err:  # the class name only: the message may quote the request
            self.error = f"/metrics scrape failed ({type(err).__name__})"
        except ServerClockError as err:
            self.error = str(err)
        return None

    def begin(self) -> None:
        self.start = self._scrape()

    def end(self) -> None:
        if self.start is not None:
            self.finish = self._scrape()

    def result(self, records: pd.DataFrame, network_ms: float) -> ServerClock:
        if self.start is None or self.finish is None:
            return ServerClock(network_ms=network_ms, notes=[self.error or "no scrape"])
        return compare(self.start, self.finish, self.metrics, records, network_ms)


def step_clock(url: str | None, metrics: dict[str, str], headers: dict[str, str] | None) -> StepClock | None:
    """A :class:`StepClock` when the server has a ``/metrics`` URL and its backend names histograms."""
    return StepClock(url, metrics, headers) if url and metrics else None
