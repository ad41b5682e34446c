"""An external endpoint per protocol the sim serves: ready by the protocol's own probes, then one real step.

(That TGI/TGIS/Caikit endpoints need no ``GET /v1/models`` is shown against a sim without that
route in ``test_external_readiness.py``.) Here each protocol goes all the way: readiness through
``ExternalBackend``, then a real Locust step through the handle it returned, gRPC included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.backends.base import BackendStartError
from harness.backends.external import ExternalBackend
from harness.backends.process import free_port
from harness.backends.registry import launch
from harness.load.runner import run_step
from harness.matrix import Cell
from harness.records import read_records
from harness.scenario import Server
from load_plans import sim_plan


@pytest.mark.parametrize("protocol", ["completions", "chat", "tgi", "tgis"])
def test_external_endpoint_per_protocol(tmp_path: Path, sim_server: Any, protocol: str) -> None:
    grpc_port = free_port()
    sim = sim_server(ttft_ms=10, itl_ms=2, grpc_port=grpc_port)
    server = Server.model_validate(
        {
            "name": "ext",
            "backend": "external",
            "model": "sim-model",
            "base_url": sim.base_url,
            "grpc_target": f"127.0.0.1:{grpc_port}",
            "api": protocol,
        }
    )
    with launch(Cell("ext", server, {}, protocol=protocol), tmp_path / "cell", home=tmp_path) as handle:
        assert handle.launch_s is not None
        plan = sim_plan(
            tmp_path,
            api=protocol,
            base_url=handle.base_url,
            grpc_target=handle.grpc_target,
            target=2,
            requests=4,
            output_tokens=6,
        )
        rows = read_records(run_step(plan, tmp_path / "step").records_path).to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert r["error_class"] is None, r["error_message"]
        assert r["api"] == protocol
        assert r["output_tokens"] == r["client_output_tokens"] == 6
        assert r["token_source"] == "usage"


def test_external_grpc_endpoint_without_grpc_target_is_not_ready(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=10, itl_ms=2)
    server = Server.model_validate(
        {"name": "ext", "backend": "external", "model": "m", "base_url": sim.base_url, "api": "tgis"}
    )
    with pytest.raises(BackendStartError, match=r"'tgis' is gRPC but the server has no gRPC address"):
        ExternalBackend(ready_timeout_s=1.0).start(Cell("ext", server, {}, protocol="tgis"), tmp_path)
