"""Benchmark an OpenAI-compatible endpoint that is already running somewhere else.

Why: the servers users care about most (a GPU deployment on Kubernetes, a
managed endpoint) are not ours to launch. Nothing is started or stopped; we
check the endpoint answers, learn what we can (version, whether it exposes
Prometheus metrics) and hand back the auth header.

The API key is read from the environment variable the scenario names, never
from the scenario itself, and lives only in ``ServerHandle.headers`` (which is
excluded from repr and from ``public_dict``): not in env, command, logs or
error messages.

Credentials in ``base_url`` (``http://user:pass@host``) are taken out of the
URL before it is used anywhere and sent as ``Authorization: Basic ...``; the
URL the harness probes, records and hands to Locust has no userinfo. When
``api_key_env`` is set too, its ``Bearer`` key is the one sent: it is the
field meant for auth, the userinfo is then ignored (and still redacted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from harness.backends.base import BackendSpec, BackendStartError, ServerHandle
from harness.backends.process import ProcessRegistry
from harness.matrix import Cell
from harness.protocols.base import Endpoint, ProtocolError
from harness.protocols.readiness import wait_until_ready
from harness.protocols.registry import get_protocol
from harness.runsecrets import basic_auth, split_userinfo
from harness.scenario import Server


def normalize_base_url(url: str) -> str:
    """``https://h/v1/`` → ``https://h``: the harness appends ``/v1/...`` itself."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url.rstrip("/")


def auth_headers(server: Server) -> dict[str, str]:
    """The Authorization header: ``api_key_env``'s Bearer key, else ``base_url``'s userinfo as Basic.

    A clear error if the named variable is unset (never its value, never the URL's userinfo).
    """
    if not server.api_key_env:
        _, userinfo = split_userinfo(server.base_url or "")
        return {"Authorization": basic_auth(userinfo)} if userinfo else {}
    key = os.environ.get(server.api_key_env)
    if not key:
        raise BackendStartError(
            f"server '{server.name}': api_key_env names environment variable "
            f"'{server.api_key_env}', which is not set (or empty)"
        )
    return {"Authorization": f"Bearer {key}"}


def _probe_version(client: httpx.Client, base_url: str) -> str | None:
    try:
        response = client.get(f"{base_url}/version")
        if response.status_code == 200:
            data = response.json()
            if isinstance(data, dict) and data.get("version") is not None:
                return str(data["version"])
    except (httpx.HTTPError, ValueError):
        pass
    return None


def _probe_metrics(client: httpx.Client, base_url: str) -> str | None:
    """``/metrics`` counts only if it answers 200 with something that looks like Prometheus text."""
    url = f"{base_url}/metrics"
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    text = response.text
    if "# TYPE" in text or "# HELP" in text:
        return url
    return None


class ExternalBackend:
    """Points the harness at a running endpoint; ``stop`` has nothing to stop."""

    def __init__(self, *, ready_timeout_s: float | None = None) -> None:
        self.ready_timeout_s = ready_timeout_s

    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        server = cell.server
        assert server.base_url, "scenario validation guarantees base_url for external"
        base_url = normalize_base_url(split_userinfo(server.base_url)[0])
        headers = auth_headers(server)
        timeout = (
            self.ready_timeout_s if self.ready_timeout_s is not None else min(server.startup_timeout_s, 60.0)
        )
        started = time.monotonic()
        # Ready by the cell's protocol's own probes (OpenAI: /v1/models; TGI: /health, /info; gRPC: health...).
        endpoint = Endpoint(
            base_url=base_url,
            model=server.served_model_name or server.model,
            grpc_target=server.grpc_target,
            grpc_tls=server.tls is not None,
            tls=server.tls_options(),
            headers=headers,
        )
        try:
            wait_until_ready(get_protocol(cell.protocol), endpoint, timeout)
        except ProtocolError as err:
            raise BackendStartError(f"cell '{cell.cell_id}': external endpoint {base_url}: {err}") from None
        launch_s = time.monotonic() - started
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), headers=headers) as client:
            version = _probe_version(client, base_url)
            metrics_url = _probe_metrics(client, base_url)
        return ServerHandle(
            base_url=base_url,
            served_model=server.served_model_name or server.model,
            command=[],
            env={},
            version=version,
            launch_s=launch_s,
            log_path=None,
            pid=None,
            metrics_url=metrics_url,
            headers=headers,
            grpc_target=server.grpc_target,
        )

    def stop(self) -> None:
        return None


class ExternalSpec(BackendSpec):
    """``backend: external``: any protocol, no settings (configure the deployment itself), nothing to set up."""

    name = "external"
    label = "external"
    protocols = ()
    endpoint = True
    launches_locally = False

    def serves(self, api: str) -> bool:
        return True  # whatever the endpoint speaks; its readiness probe says whether it does

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> ExternalBackend:
        return ExternalBackend()


SPEC = ExternalSpec()
