"""The sim's one gRPC server: TGIS ``fmaas.GenerationService``, Caikit ``NlpService``, health, runtime info.

Why one port for both APIs: they share the sim's counters, faults and write log anyway, and a
scenario picks the protocol, not the port. Why a hand-written health service: the standard
``grpc.health.v1.Health/Check`` is two one-field messages, and the harness's environment does not
carry ``grpcio-health-checking``; answering it lets readiness probes written for the real servers
(the TGIS adapter and the Caikit runtime both serve it) run against the sim unchanged. Like the
real servers, the overall status ``""`` and each served service name are ``SERVING``; any other
name is ``NOT_FOUND``. ``caikit.runtime.info.InfoService/GetRuntimeInfo`` (the ``caikit-grpc``
protocol's readiness call) answers a ``RuntimeInfoResponse`` naming the sim, by hand for the same
reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from harness.protocols.proto import caikit_nlp_pb2_grpc
from harness.sim.caikit_grpc import CaikitServicer
from harness.sim.tgis_grpc import TgisServicer, pb_grpc

if TYPE_CHECKING:
    from harness.sim.server import SimServer

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVED = ("", "fmaas.GenerationService", "caikit.runtime.Nlp.NlpService")
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
INFO_SERVICE = "caikit.runtime.info.InfoService"
# RuntimeInfoResponse{python_packages: {"caikit": "sim"}} (field 2, a map entry {1: key, 2: value})
RUNTIME_INFO = b"\x12\x0d\x0a\x06caikit\x12\x03sim"


def _requested_service(data: bytes) -> str:
    """The ``service`` field (1, string) of a ``HealthCheckRequest``; empty when absent."""
    if len(data) >= 2 and data[0] == 0x0A:
        size, pos, shift = 0, 1, 0
        while pos < len(data):
            byte = data[pos]
            size |= (byte & 0x7F) << shift
            pos += 1
            shift += 7
            if not byte & 0x80:
                break
        return data[pos : pos + size].decode("utf-8", errors="replace")
    return ""


async def _check(request: bytes, context: aio.ServicerContext) -> bytes:
    service = _requested_service(request)
    if service not in SERVED:
        await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return SERVING


async def _runtime_info(request: bytes, context: aio.ServicerContext) -> bytes:
    return RUNTIME_INFO


def _handlers() -> tuple[Any, ...]:
    check = grpc.unary_unary_rpc_method_handler(_check)  # no (de)serializer: raw bytes
    info = grpc.unary_unary_rpc_method_handler(_runtime_info)
    return (
        grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": check}),
        grpc.method_handlers_generic_handler(INFO_SERVICE, {"GetRuntimeInfo": info}),
    )


async def start_grpc(sim: SimServer, host: str, port: int) -> tuple[aio.Server, int]:
    """Start the gRPC services on ``host:port`` (0 picks a free port); returns the server and its port."""
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    tgis = TgisServicer(sim)
    pb_grpc.add_GenerationServiceServicer_to_server(tgis, server)
    caikit_nlp_pb2_grpc.add_NlpServiceServicer_to_server(CaikitServicer(tgis), server)
    server.add_generic_rpc_handlers(_handlers())
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"--grpc-port {port}: cannot bind {host}:{port}")
    await server.start()
    return server, bound
