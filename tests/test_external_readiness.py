"""An external endpoint becomes ready by its protocol's own probes, not by ``GET /v1/models``.

Why against the sim with ``no_openai_models``: a TGI, TGIS or Caikit server has no
``/v1/models``; before protocols owned readiness, such an endpoint never became ready. The sim
serving every protocol but that route shows each protocol's probes pass on their own, and that
the OpenAI protocols still insist on their route (so the test can fail both ways).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness.backends.base import BackendStartError
from harness.backends.external import ExternalBackend
from harness.matrix import Cell
from harness.protocols.registry import protocol_names
from harness.scenario import Server

NON_OPENAI = ("tgi", "tgis", "caikit-grpc", "caikit-http")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cell(base_url: str, grpc_target: str, protocol: str) -> Cell:
    server = Server.model_validate(
        {
            "name": "ext",
            "backend": "external",
            "model": "sim-model",
            "base_url": base_url,
            "grpc_target": grpc_target,
            "api": protocol,
        }
    )
    return Cell(f"ext-{protocol}", server, {}, protocol=protocol)


@pytest.fixture()
def bare_sim(sim_server):
    grpc_port = _free_port()
    sim = sim_server(grpc_port=grpc_port, no_openai_models=True)
    return sim, f"127.0.0.1:{grpc_port}"


def test_every_registered_protocol_is_covered() -> None:
    assert set(protocol_names()) == {*NON_OPENAI, "completions", "chat"}


@pytest.mark.parametrize("protocol", NON_OPENAI)
def test_external_endpoint_without_models_route_is_ready(bare_sim, protocol: str, tmp_path: Path) -> None:
    sim, grpc_target = bare_sim
    handle = ExternalBackend(ready_timeout_s=20).start(_cell(sim.base_url, grpc_target, protocol), tmp_path)
    assert handle.base_url == sim.base_url and handle.grpc_target == grpc_target
    assert handle.launch_s is not None and handle.launch_s < 20


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_openai_protocols_still_need_the_models_route(bare_sim, protocol: str, tmp_path: Path) -> None:
    sim, grpc_target = bare_sim
    with pytest.raises(BackendStartError, match="/v1/models answered HTTP 404"):
        ExternalBackend(ready_timeout_s=1).start(_cell(sim.base_url, grpc_target, protocol), tmp_path)
