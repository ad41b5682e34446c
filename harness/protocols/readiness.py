"""Waiting until a server can take load, by the probes its protocol names.

Why the protocol decides: "ready" means different calls on different
servers. An OpenAI server lists its models at ``GET /v1/models``; TGI has
``/health`` and ``/info``; TGIS and Caikit answer gRPC health and a model or
runtime info call. A wait hard-wired to ``/v1/models`` never ends for the
others.

Probes run in order; each is retried until it passes or the deadline is
reached, and the error names the probe that kept failing and its last answer.
Auth headers go with every probe (as HTTP headers, and as gRPC metadata), and
never into an error message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from harness.protocols.base import Endpoint, GrpcProbe, HttpProbe, Probe, ProtocolError, ProtocolSpec
from harness.protocols.tls import grpc_channel, http_extensions, ssl_context

PROBE_TIMEOUT_S = 5.0


class NotReady(ProtocolError):
    """The server did not pass its protocol's readiness probes in time."""


def _http_check(client: httpx.Client, endpoint: Endpoint, probe: HttpProbe) -> str | None:
    url = f"{endpoint.base_url}{probe.path}"
    try:
        response = client.get(url, extensions=http_extensions(endpoint.tls))
    except httpx.HTTPError as err:
        return f"GET {url}: {type(err).__name__}: {err}"
    if 200 <= response.status_code < 300:
        return None
    return f"GET {url} answered HTTP {response.status_code}"


def _grpc_check(channel: object, endpoint: Endpoint, probe: GrpcProbe) -> str | None:
    import grpc

    metadata = [(k.lower(), v) for k, v in endpoint.headers.items()]
    call = channel.unary_unary(probe.method)  # type: ignore[attr-defined]
    try:
        reply = call(probe.request(endpoint), timeout=PROBE_TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as err:
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        if probe.skip_unimplemented and code == grpc.StatusCode.UNIMPLEMENTED:
            return None
        details = err.details() if callable(getattr(err, "details", None)) else ""
        return f"gRPC {probe.method} at {endpoint.grpc_target}: {code.name}: {details}"
    why = probe.check(reply)
    return None if why is None else f"gRPC {probe.method} at {endpoint.grpc_target}: {why}"


def wait_until_ready(
    spec: ProtocolSpec,
    endpoint: Endpoint,
    timeout_s: float,
    *,
    interval_s: float = 0.25,
    still_alive: Callable[[], None] | None = None,
) -> float:
    """Run ``spec.readiness`` against ``endpoint`` until every probe passes; returns the seconds it took.

    ``still_alive`` is called between attempts and may raise (a launched
    server that exited should not cost the full timeout).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    pending: list[Probe] = list(spec.readiness)
    if any(isinstance(p, GrpcProbe) for p in pending) and not endpoint.grpc_target:
        raise NotReady(f"protocol '{spec.name}' is gRPC but the server has no gRPC address (grpc_target)")
    verify = ssl_context(endpoint.tls) if endpoint.base_url.startswith("https://") else True
    channel = None
    last = "no attempt made"
    with httpx.Client(
        timeout=httpx.Timeout(PROBE_TIMEOUT_S, connect=2.0), headers=dict(endpoint.headers), verify=verify
    ) as client:
        try:
            while pending:
                if still_alive is not None:
                    still_alive()
                probe = pending[0]
                if isinstance(probe, HttpProbe):
                    why = _http_check(client, endpoint, probe)
                else:
                    if channel is None:
                        assert endpoint.grpc_target is not None
                        channel = grpc_channel(
                            endpoint.grpc_target,
                            tls=endpoint.grpc_tls,
                            options=endpoint.tls,
                            own_connection=False,
                        )
                    why = _grpc_check(channel, endpoint, probe)
                if why is None:
                    pending.pop(0)
                    continue
                last = why
                if time.monotonic() >= deadline:
                    raise NotReady(f"not ready after {timeout_s:.0f}s ({spec.name}); last error: {last}")
                time.sleep(interval_s)
        finally:
            if channel is not None:
                channel.close()
    return time.monotonic() - started


def decide_stream_usage(spec: ProtocolSpec, mode: str, endpoint: Endpoint) -> tuple[bool, str]:
    """Whether a cell's requests carry the protocol's optional usage block, and why (recorded per cell).

    ``mode`` is the server's ``stream_usage``: ``on``/``off`` decide; ``auto``
    asks the server once (``ProtocolSpec.probe_stream_usage``), before load.
    """
    if not spec.stream_usage:
        return False, f"protocol '{spec.name}' has no optional usage block"
    if mode in ("on", "off"):
        return mode == "on", f"stream_usage: {mode}"
    verify = ssl_context(endpoint.tls) if endpoint.base_url.startswith("https://") else True
    timeout = httpx.Timeout(60.0, connect=5.0)
    with httpx.Client(timeout=timeout, headers=dict(endpoint.headers), verify=verify) as client:
        return spec.probe_stream_usage(
            endpoint.base_url, endpoint.model, client, http_extensions(endpoint.tls)
        )
