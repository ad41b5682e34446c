"""TLS for both transports: one place that turns ``TlsOptions`` into an SSL context or gRPC channel.

Why shared: the load users (gevent sockets, grpcio) and the readiness probes
(httpx, grpcio) must trust the same CA bundle and the same server name, or an
endpoint could pass readiness and then fail every request (or the reverse).

* HTTP: TLS when the base URL is ``https://``; ``ca_bundle`` replaces the
  system roots, ``server_name`` the name checked (and sent as SNI), and
  ``insecure_skip_verify`` turns verification off (the report says so).
* gRPC: TLS when the server has a ``tls`` block; the same CA bundle and
  server-name override (``grpc.ssl_target_name_override``). grpcio cannot skip
  verification, so the scenario rejects ``insecure_skip_verify`` for gRPC.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.protocols.base import TlsOptions


def ssl_context(
    options: TlsOptions, create: Callable[..., ssl.SSLContext] = ssl.create_default_context
) -> ssl.SSLContext:
    """A client context for ``options`` (``create``: ``ssl.`` or ``gevent.ssl.create_default_context``)."""
    ctx = create(cafile=options.ca_bundle) if options.ca_bundle else create()
    if options.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_extensions(options: TlsOptions) -> dict[str, Any]:
    """Per-request httpx extensions: the server-name override as SNI and verified name (httpcore's ``sni_hostname``)."""
    return {"sni_hostname": options.server_name} if options.server_name else {}


def grpc_channel(
    target: str, *, tls: bool, options: TlsOptions | None = None, own_connection: bool = True
) -> Any:
    """A channel to ``host:port``: plaintext, or TLS with the CA bundle and server-name override.

    ``own_connection``: a local subchannel pool gives each load user its own
    HTTP/2 connection, as each HTTP user has its own socket; a shared one
    would multiplex every stream on one connection.
    """
    import grpc

    opts: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    if not tls:
        return grpc.insecure_channel(target, options=opts)
    tls_opts = options or TlsOptions()
    roots = Path(tls_opts.ca_bundle).read_bytes() if tls_opts.ca_bundle else None
    if tls_opts.server_name:
        opts.append(("grpc.ssl_target_name_override", tls_opts.server_name))
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options=opts)
