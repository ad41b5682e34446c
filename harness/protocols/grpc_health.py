"""The standard gRPC health check (``grpc.health.v1.Health/Check``) as a readiness probe.

Why no ``grpcio-health-checking``: the probe needs two tiny messages, and the
harness should not pull a package for them. ``HealthCheckRequest`` with an
empty ``service`` (the whole server) serializes to no bytes at all, and
``HealthCheckResponse`` is one enum field, ``status = 1``; ``SERVING`` is 1.
A server without the health service (``UNIMPLEMENTED``) passes this probe:
the protocol's next probe (a model-info call) still has to succeed.
"""

from __future__ import annotations

from harness.protocols.base import Endpoint, GrpcProbe

METHOD = "/grpc.health.v1.Health/Check"
SERVING = 1
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _request(_endpoint: Endpoint) -> bytes:
    return b""


def health_status(raw: bytes) -> int:
    """The ``status`` field of a serialized ``HealthCheckResponse`` (0 when absent)."""
    status = 0
    i = 0
    while i < len(raw):
        key = raw[i]
        i += 1
        if key & 7 != 0:  # only varint fields are expected; anything else ends the scan
            break
        value = shift = 0
        while i < len(raw):
            byte = raw[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key >> 3 == 1:
            status = value
    return status


def _serving(raw: bytes) -> str | None:
    status = health_status(raw)
    if status == SERVING:
        return None
    return f"gRPC health is {_STATUS_NAMES.get(status, status)}, not SERVING"


HEALTH_PROBE = GrpcProbe(METHOD, _request, _serving, skip_unimplemented=True)
