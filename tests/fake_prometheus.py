"""A test double of a cluster's Prometheus: ``/api/v1/query_range`` over made-up DCGM exporter series.

What it proves: the harness sends a well-formed range query (the PromQL
selector, the start/end in Unix seconds, the step) with the Bearer token,
parses a matrix answer, and copes with a refused token, an empty match and
an error answer. What it does not prove: real PromQL semantics (only
``METRIC{label="v",label=~"re",...}`` is understood, with no functions),
Prometheus's lookback and staleness, Thanos deduplication, or that a real
DCGM exporter labels pods as assumed.

Each fake GPU has labels like the exporter's (``gpu``, ``UUID``,
``Hostname``, ``modelName`` and the pod/namespace under ``pod_label`` /
``namespace_label``) and a memory-used value in MiB that may depend on the
evaluation time. Every query received is kept (``queries``) so tests can
assert what was asked; the Authorization header is kept only as whether it
matched.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

FB_USED = "DCGM_FI_DEV_FB_USED"
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


@dataclass
class FakeGpu:
    """One GPU of the fake cluster, in use by ``pod``; ``used_mib(t)`` at Unix time ``t``."""

    index: int
    pod: str
    namespace: str
    used_mib: Callable[[float], float] = lambda t: 20_480.0
    util: float = 87.0
    hostname: str = "gpu-node-1"
    uuid: str | None = None

    def labels(self, pod_label: str, namespace_label: str, instance: str) -> dict[str, str]:
        return {
            "gpu": str(self.index),
            "UUID": self.uuid or f"GPU-fake-{self.hostname}-{self.index}",
            "Hostname": self.hostname,
            "modelName": "NVIDIA H100 80GB HBM3",
            "device": f"nvidia{self.index}",
            "instance": instance,
            "job": "nvidia-dcgm-exporter",
            pod_label: self.pod,
            namespace_label: self.namespace,
        }


@dataclass
class Query:
    """One request as received: the PromQL, the range, and whether the token matched."""

    path: str
    query: str
    start: float
    end: float
    step: float
    authorized: bool


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_selector(promql: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``METRIC{l="v",l2=~"re"}`` -> (metric, [(label, op, value)]); ValueError otherwise."""
    m = re.fullmatch(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*", promql, re.S)
    if not m:
        raise ValueError(f"the fake understands only METRIC{{matchers}}, got {promql!r}")
    metric, body = m.group(1), (m.group(2) or "").strip()
    matchers: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(body):
        mm = _MATCHER.match(body, pos)
        if not mm:
            raise ValueError(f"bad matcher at {body[pos:]!r}")
        matchers.append((mm.group(1), mm.group(2), _unescape(mm.group(3))))
        pos = mm.end()
    return metric, matchers


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "=~" and not re.fullmatch(value, have):
            return False
        if op == "!~" and re.fullmatch(value, have):
            return False
    return True


@dataclass
class FakePrometheus:
    """Serves ``GET /api/v1/query_range`` on 127.0.0.1; ``with FakePrometheus(...) as prom: prom.url``.

    ``token``: the Bearer token required (None: no auth). ``duplicate``: every
    series is answered twice (two scrapes of one exporter, other ``instance``),
    as a Prometheus HA pair without deduplication would. ``fail_status``: answer
    every query with this HTTP status and a Prometheus error body that quotes
    the request's Authorization header (as a careless proxy might).
    """

    gpus: list[FakeGpu] = field(default_factory=list)
    token: str | None = None
    pod_label: str = "pod"
    namespace_label: str = "namespace"
    duplicate: bool = False
    fail_status: int | None = None
    queries: list[Query] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, path: str, params: dict[str, str], auth: str | None) -> tuple[int, dict[str, Any]]:
        authorized = self.token is None or auth == f"Bearer {self.token}"
        try:
            query = Query(
                path,
                params.get("query", ""),
                float(params["start"]),
                float(params["end"]),
                float(params["step"]),
                authorized,
            )
        except (KeyError, ValueError):
            return 400, {"status": "error", "errorType": "bad_data", "error": "missing start/end/step"}
        self.queries.append(query)
        if not authorized:
            return 401, {"status": "error", "errorType": "unauthorized", "error": "Unauthorized"}
        if self.fail_status is not None:
            return self.fail_status, {"status": "error", "errorType": "internal", "error": f"boom ({auth})"}
        if path != "/api/v1/query_range":
            return 404, {"status": "error", "errorType": "not_found", "error": path}
        try:
            metric, matchers = parse_selector(query.query)
        except ValueError as err:
            return 400, {"status": "error", "errorType": "bad_data", "error": str(err)}
        result: list[dict[str, Any]] = []
        times: list[float] = []
        t = query.start
        while t <= query.end + 1e-9:
            times.append(round(t, 3))
            t += query.step
        instances = ["10.0.0.7:9400", "10.0.0.8:9400"] if self.duplicate else ["10.0.0.7:9400"]
        for gpu in self.gpus:
            for instance in instances:
                labels = {"__name__": metric, **gpu.labels(self.pod_label, self.namespace_label, instance)}
                if metric not in (FB_USED, GPU_UTIL) or not _matches(labels, matchers):
                    continue
                value = gpu.used_mib if metric == FB_USED else (lambda _t, u=gpu.util: u)
                result.append({"metric": labels, "values": [[ts, f"{value(ts):g}"] for ts in times]})
        return 200, {"status": "success", "data": {"resultType": "matrix", "result": result}}

    def __enter__(self) -> FakePrometheus:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                status, body = fake.answer(parts.path, params, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
