"""A step whose requests (nearly) all fail fails its cell, names the cause, and the run exits non-zero."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_runner import tokenbench
from harness.results import StepMetrics
from harness.stepcheck import StepFailed, check_step


class _Unauthorized(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # readiness (/v1/models) answers, so the endpoint looks healthy
        body = b'{"data": [{"id": "m"}]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": "invalid API key"}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unauthorized() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_request_401_fails_the_cell_naming_authentication(tmp_path: Path, unauthorized: str) -> None:
    scenario = {
        "name": "auth",
        "servers": [{"name": "ext", "backend": "external", "model": "m", "base_url": unauthorized}],
        "workload": {
            "prompt_tokens": 4,
            "output_tokens": 4,
            "steps": {"concurrency": [2, 4]},
            "duration_s": 2,
            "timeout_s": 5,
        },
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tokenbench("run", path, "--out", tmp_path / "r", timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    summary = json.loads((next((tmp_path / "r").iterdir()) / "summary.json").read_text())
    cell = summary["cells"][0]
    assert cell["status"] == "failed"
    assert "authentication failed (401 Unauthorized)" in cell["error"]
    assert "http_4xx" in cell["error"] and "invalid API key" in cell["error"]
    assert [s["step_id"] for s in cell["steps"]] == ["c2"]  # c4 skipped


def _frame(errors: int, ok: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "warmup": [False] * (errors + ok),
            "error_class": ["http_5xx"] * errors + [None] * ok,
            "status": [503] * errors + [200] * ok,
            "error_message": ["HTTP 503: overloaded"] * errors + [None] * ok,
        }
    )


def _metrics() -> StepMetrics:
    return StepMetrics(
        step_id="c1", kind="concurrency", target=1, duration_s=1, requests_total=1, requests_ok=0,
        requests_warmup=0,
    )  # fmt: skip


def test_threshold_is_inclusive_and_configurable() -> None:
    check_step(_frame(4, 6), _metrics(), 0.5)  # 40 % < 50 %: a measurement, errors and all
    with pytest.raises(StepFailed, match=r"5 of 10 requests failed \(50% >= abort_error_rate 50%\)"):
        check_step(_frame(5, 5), _metrics(), 0.5)
    with pytest.raises(StepFailed, match="HTTP statuses: 503 x1; sample: HTTP 503: overloaded"):
        check_step(_frame(1, 9), _metrics(), 0.1)
    check_step(_frame(9, 1), _metrics(), 1.0)  # 1.0: only a step with no success at all fails


def test_a_step_without_measured_requests_fails() -> None:
    with pytest.raises(StepFailed, match="no request was measured"):
        check_step(_frame(0, 0), _metrics(), 0.5)
