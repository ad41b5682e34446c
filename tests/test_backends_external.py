"""External backend: URL normalisation, auth from an env var, probing, and the key never leaking."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.backends.base import BackendStartError
from harness.backends.external import ExternalBackend, normalize_base_url
from harness.backends.registry import launch
from harness.matrix import Cell
from harness.scenario import Server

KEY = "sk-test-7f3a9c-do-not-leak"


class _Endpoint(BaseHTTPRequestHandler):
    """Requires the bearer key on /v1/*; optional /version and /metrics per class flags."""

    with_version = True
    with_metrics = True
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        auth = self.headers.get("Authorization")
        type(self).seen_auth.append(auth)
        if self.path == "/v1/models":
            ok = auth == f"Bearer {KEY}"
            self._send(200 if ok else 401, b'{"data": [{"id": "m"}]}' if ok else b"{}")
        elif self.path == "/version" and self.with_version:
            self._send(200, b'{"version": "0.11.2"}')
        elif self.path == "/metrics" and self.with_metrics:
            self._send(200, b"# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n")
        elif self.path == "/metrics":
            self._send(200, b"<html>not prometheus</html>")
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def endpoint() -> Iterator[str]:
    _Endpoint.seen_auth = []
    _Endpoint.with_version = True
    _Endpoint.with_metrics = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _cell(base_url: str, **kw: object) -> Cell:
    server = Server.model_validate(
        {
            "name": "ext",
            "backend": "external",
            "model": "m",
            "base_url": base_url,
            "api_key_env": "TB_TEST_KEY",
            **kw,
        }
    )
    return Cell("ext", server, {})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8000", "http://h:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("http://h:8000/v1", "http://h:8000"),
        ("https://h/prefix/v1/", "https://h/prefix"),
    ],
)
def test_normalize_base_url(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


def test_start_sends_key_probes_and_never_leaks_it(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    with launch(_cell(endpoint + "/v1/"), tmp_path, home=tmp_path) as handle:
        assert handle.base_url == endpoint
        assert handle.headers == {"Authorization": f"Bearer {KEY}"}
        assert handle.version == "0.11.2"
        assert handle.metrics_url == endpoint + "/metrics"
        assert handle.command == [] and handle.env == {} and handle.pid is None and handle.log_path is None
        assert KEY not in repr(handle)
        assert KEY not in str(handle.public_dict())
    assert f"Bearer {KEY}" in _Endpoint.seen_auth
    assert all(KEY not in p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_metrics_and_version_absent(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TB_TEST_KEY", KEY)
    _Endpoint.with_version = False
    _Endpoint.with_metrics = False
    handle = ExternalBackend().start(_cell(endpoint), tmp_path)
    assert handle.version is None
    assert handle.metrics_url is None


def test_missing_key_env_is_a_clear_error(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TB_TEST_KEY", raising=False)
    with pytest.raises(BackendStartError, match="'TB_TEST_KEY', which is not set"):
        ExternalBackend().start(_cell(endpoint), tmp_path)


def test_wrong_key_fails_without_echoing_it(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TB_TEST_KEY", "sk-wrong-key-123")
    with pytest.raises(BackendStartError) as info:
        ExternalBackend(ready_timeout_s=0.3).start(_cell(endpoint), tmp_path)
    assert "401" in str(info.value)
    assert "sk-wrong-key-123" not in info.value.details()


def test_no_key_env_means_no_header(endpoint: str, tmp_path: Path) -> None:
    cell = _cell(endpoint, api_key_env=None)
    with pytest.raises(BackendStartError, match="401"):
        ExternalBackend(ready_timeout_s=0.3).start(cell, tmp_path)
    assert _Endpoint.seen_auth and all(a is None for a in _Endpoint.seen_auth)
