"""GPU memory and utilisation of a server pod, from the cluster's Prometheus (NVIDIA DCGM exporter).

Why Prometheus and not NVML: a server the harness did not launch on this host
(``external``, ``kserve``) runs on GPUs this host cannot see. The DCGM
exporter on the GPU node measures them and labels each GPU with the pod using
it; the cluster's Prometheus (or Thanos Querier) keeps the series. After a
cell, its steps' windows (plus ``margin_s``) are asked for with
``/api/v1/query_range`` and the answer is put on the records' monotonic axis
through the cell's ``ClockMap``.

What it can and cannot say: ``DCGM_FI_DEV_FB_USED`` (MiB) is device memory
used on the pod's GPUs, as NVML's device figure is; its time resolution is the
exporter's collection and Prometheus's scrape interval (often 15-30 s), held
between scrapes, however fine ``step_s`` is. The last scrape of a cell may not
be ingested yet when the cell ends.

Failures never stop a run: each becomes a ``RemoteGpu`` status with a message
(refused token, no series for the selector, Prometheus unreachable). The token
is sent as a header and appears in no row, status, message or log.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import httpx

from harness.bounds import without_userinfo
from harness.redact import scrub_text
from harness.results import RemoteGpu, RemoteGpuStatus
from harness.telemetry.clock import ClockMap
from harness.telemetry.config import TelemetryConfig
from harness.telemetry.prometheus import format_labels

SOURCE = "dcgm"  # the ``source`` of these rows in timeseries.parquet
FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # percent
MIB = 2**20
MAX_POINTS = 10_000  # per series per query; Prometheus refuses more than 11,000
KEEP_LABELS = ("gpu", "UUID", "Hostname", "modelName", "container", "exported_container")


@dataclass(frozen=True, slots=True)
class Window:
    """When a step (or, with ``step_id`` None, the cell) ran, in monotonic ns."""

    step_id: str | None
    start_ns: int
    end_ns: int


def promql_string(value: str) -> str:
    """``value`` as a PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector_for(config: TelemetryConfig, pod: str | None, namespace: str | None) -> str | None:
    """The label matchers for the server's GPUs: the handle's pod/namespace, else the scenario's.

    A pod the handle names (a kserve cell) is matched exactly; ``telemetry.pod``
    is a regex. None when there is nothing to select by (the query would match
    every GPU of the cluster).
    """
    matchers: list[str] = []
    ns = namespace or config.namespace
    if ns:
        matchers.append(f"{config.namespace_label}={promql_string(ns)}")
    if pod:
        matchers.append(f"{config.pod_label}={promql_string(pod)}")
    elif config.pod:
        matchers.append(f"{config.pod_label}=~{promql_string(config.pod)}")
    return "{" + ",".join(matchers) + "}" if matchers else None


def query_spans(
    windows: list[Window], margin_s: float, now_ns: int, step_s: float, not_before_ns: int | None = None
) -> list[tuple[int, int]]:
    """The monotonic spans to ask for: each window widened by the margin, overlaps merged, none
    past ``now_ns`` (Prometheus would repeat its last value into the future) or before
    ``not_before_ns`` (the cell's start: earlier values may be another cell's load), split so no
    query returns more than ``MAX_POINTS`` points per series.

    Why a margin after a step matters most: the exporter collects every few seconds and
    Prometheus scrapes it every 15-30 s, so what a step did to the GPU may appear only after it.
    """
    margin = int(margin_s * 1e9)
    floor = not_before_ns if not_before_ns is not None else -(2**62)
    spans = sorted((max(w.start_ns - margin, floor), min(w.end_ns + margin, now_ns)) for w in windows)
    merged: list[list[int]] = []
    for start, end in spans:
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    longest = int(MAX_POINTS * step_s * 1e9)
    out: list[tuple[int, int]] = []
    for start, end in merged:
        while end - start > longest:
            out.append((start, start + longest))
            start += longest
        out.append((start, end))
    return out


def step_at(t_ns: int, windows: list[Window]) -> str | None:
    """The step running at ``t_ns`` (None between steps and in the margins)."""
    for w in windows:
        if w.step_id is not None and w.start_ns <= t_ns <= w.end_ns:
            return w.step_id
    return None


class QueryFailed(Exception):
    """A query Prometheus did not answer with data; ``status`` says which kind of failure."""

    def __init__(self, status: RemoteGpuStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def api_base(url: str) -> str:
    """The Prometheus root, whether the scenario gave it with or without ``/api/v1[/query_range]``."""
    url = url.rstrip("/")
    for suffix in ("/api/v1/query_range", "/api/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


class RangeClient:
    """``GET /api/v1/query_range`` on one Prometheus, with an optional Bearer token."""

    def __init__(self, url: str, token: str | None, timeout_s: float, token_env: str | None = None) -> None:
        self.base = api_base(url)
        self.shown = without_userinfo(self.base)
        self._token = token
        self._token_env = token_env
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=True)
        self.queries = 0

    def _scrub(self, text: str) -> str:
        return scrub_text(text, frozenset({self._token}) if self._token else frozenset())

    def query_range(self, query: str, start_s: float, end_s: float, step_s: float) -> list[dict[str, Any]]:
        """The ``result`` list of a matrix answer; raises ``QueryFailed``."""
        params = {"query": query, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
        self.queries += 1
        try:
            resp = self._client.get(f"{self.base}/api/v1/query_range", params=params)
        except httpx.HTTPError as err:  # the message may quote the request; the class name is enough
            raise QueryFailed(
                "unreachable", f"Prometheus {self.shown} unreachable ({type(err).__name__})"
            ) from None
        if resp.status_code in (401, 403):
            given = f"the token in ${self._token_env} was refused" if self._token else "no token was sent"
            hint = "" if self._token else " (set telemetry.prometheus_token_env)"
            raise QueryFailed(
                "auth_failed", f"Prometheus {self.shown} answered HTTP {resp.status_code}: {given}{hint}"
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else None
            text = self._scrub(str(detail or resp.text[:200]).strip())[:300]
            raise QueryFailed("error", f"Prometheus {self.shown} answered HTTP {resp.status_code}: {text}")
        data = body.get("data")
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list):
            raise QueryFailed("error", f"Prometheus {self.shown}: answer has no data.result list")
        return [r for r in result if isinstance(r, dict)]

    def close(self) -> None:
        self._client.close()


def _gpu_key(metric: dict[str, str]) -> tuple[str, ...]:
    """One GPU, however many times it was scraped (two Prometheus replicas, two exporters)."""
    if metric.get("UUID"):
        return ("uuid", metric["UUID"])
    if metric.get("gpu") is not None and metric.get("Hostname"):
        return ("gpu", metric["Hostname"], metric["gpu"])
    return tuple(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without repeats: a point on the boundary of two split queries is answered by both."""
    seen: set[tuple[str, str, int]] = set()
    out: list[dict[str, Any]] = []
    for row in rows:
        key = (row["name"], row["labels"], row["t_ns"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


@dataclass
class RemoteGpuQuery:
    """What to ask one cell's Prometheus and how; :meth:`fetch` asks it (once, after the cell)."""

    config: TelemetryConfig
    selector: str | None
    token: str | None = None
    missing_token_env: str | None = None

    @classmethod
    def for_server(
        cls, config: TelemetryConfig | None, pod: str | None, namespace: str | None
    ) -> RemoteGpuQuery | None:
        """The query for a server not on this host, or None when no Prometheus is configured."""
        if config is None or config.prometheus_url is None:
            return None
        token = missing = None
        if config.prometheus_token_env:
            token = os.environ.get(config.prometheus_token_env) or None
            missing = None if token else config.prometheus_token_env
        return cls(config, selector_for(config, pod, namespace), token, missing)

    def _status(self, status: RemoteGpuStatus, clock: ClockMap, **fields: Any) -> RemoteGpu:
        assert self.config.prometheus_url is not None
        return RemoteGpu(
            url=without_userinfo(api_base(self.config.prometheus_url)),
            selector=self.selector or "{}",
            status=status,
            step_s=self.config.step_s,
            wall_minus_monotonic_ns=clock.wall_minus_monotonic_ns,
            clock_uncertainty_ns=clock.uncertainty_ns,
            **fields,
        )

    def fetch(
        self,
        cell_id: str,
        windows: list[Window],
        clock: ClockMap,
        now_ns: int,
        not_before_ns: int | None = None,
    ) -> tuple[list[dict[str, Any]], RemoteGpu]:
        """Timeseries rows (source ``dcgm``: ``gpu_used_bytes``, ``gpu_util`` per GPU) and the status,
        for the ``windows`` (see ``query_spans``) of a cell that started at ``not_before_ns``."""
        if self.missing_token_env:
            message = (
                f"telemetry.prometheus_token_env names '{self.missing_token_env}', which is not set "
                "(or empty); GPU memory not measured"
            )
            return [], self._status("no_token", clock, message=message)
        if self.selector is None:
            message = "no pod or namespace to select the server's GPUs by (set telemetry.pod / namespace)"
            return [], self._status("no_selector", clock, message=message)
        cfg = self.config
        assert cfg.prometheus_url is not None
        client = RangeClient(cfg.prometheus_url, self.token, cfg.timeout_s, cfg.prometheus_token_env)
        rows: list[dict[str, Any]] = []
        gpus: set[tuple[str, ...]] = set()
        failure: QueryFailed | None = None
        spans = query_spans(windows, cfg.margin_s, now_ns, cfg.step_s, not_before_ns)
        try:
            for name, metric, scale in (("gpu_used_bytes", FB_USED, MIB), ("gpu_util", GPU_UTIL, 1)):
                for start, end in spans:
                    try:
                        result = client.query_range(
                            metric + self.selector, clock.to_wall_s(start), clock.to_wall_s(end), cfg.step_s
                        )
                    except QueryFailed as err:
                        failure = err
                        break
                    found = self._rows(cell_id, name, scale, result, windows, clock)
                    rows += found[0]
                    if metric == FB_USED:
                        gpus |= found[1]
                if failure is not None:
                    break
        finally:
            client.close()
        rows = _unique(rows)
        used = sum(1 for r in rows if r["name"] == "gpu_used_bytes")
        counts = {"series": len(gpus), "samples": used, "queries": client.queries}
        if failure is not None:
            return rows, self._status(failure.status, clock, message=failure.message, **counts)
        if not gpus:
            first, last = (clock.to_wall_s(spans[0][0]), clock.to_wall_s(spans[-1][1])) if spans else (0, 0)
            message = (
                f"no {FB_USED} series matched {self.selector} between Unix time {first:.0f} and {last:.0f} "
                f"(is the DCGM exporter scraped, and does it label the pod as '{cfg.pod_label}'? "
                "A Prometheus that does not honour its labels calls it 'exported_pod')"
            )
            return rows, self._status("no_series", clock, message=message, **counts)
        return rows, self._status("ok", clock, **counts)

    def _rows(
        self,
        cell_id: str,
        name: str,
        scale: float,
        result: list[dict[str, Any]],
        windows: list[Window],
        clock: ClockMap,
    ) -> tuple[list[dict[str, Any]], set[tuple[str, ...]]]:
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, ...]] = set()
        keep = (*KEEP_LABELS, self.config.pod_label, self.config.namespace_label)
        for series in result:
            metric = {str(k): str(v) for k, v in (series.get("metric") or {}).items()}
            key = _gpu_key(metric)
            if key in seen:
                continue  # the same GPU scraped twice: count it once
            seen.add(key)
            labels = format_labels({k: v for k, v in metric.items() if k in keep})
            for point in series.get("values") or []:
                try:
                    ts, value = float(point[0]), float(point[1])
                except (TypeError, ValueError, IndexError):
                    continue
                if not (math.isfinite(ts) and math.isfinite(value)):
                    continue
                t_ns = clock.to_monotonic_ns(ts)
                rows.append(
                    {
                        "cell_id": cell_id,
                        "step_id": step_at(t_ns, windows),
                        "t_ns": t_ns,
                        "source": SOURCE,
                        "name": name,
                        "value": value * scale,
                        "labels": labels,
                    }
                )
        return rows, seen
