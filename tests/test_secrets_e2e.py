"""A distinctive key planted through every route a secret enters a run, then looked for everywhere.

Routes: ``api_key_env`` (sent as Bearer), ``base_url`` userinfo (sent as Basic), ``servers[].env``
(``HF_TOKEN``), ``args`` (``--api-key``, ``--hf-token``, ``--middleware 'Bearer ...'``) and a
``--set`` value. Two external servers point at a capture server (``tests/capture_http.py``) that
echoes the Authorization header back in 401 bodies and in SSE error events; a launched sim
server runs under an interpreter double (``tests/echo_args_python.py``) that prints its args
and environment into ``server.log``, as vLLM does. Then every file of the run folder (Parquet
read as data, since its pages are compressed), stdout, stderr and what the capture server
received are searched: each key is only in the Authorization header on the wire.
"""

from __future__ import annotations

import base64
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from capture_http import Capture, serve_capture
from cli_runner import REPO, tokenbench

PREFIX = "TbPlant"  # every planted key starts so: a leak of any part of one shows as the prefix
KEYS = {
    "api_key_env": "TbPlant-apikeyenv-4f1c9a7e2b",
    "userinfo": "TbPlant-userinfo-8d2e6b0a41",
    "env": "TbPlant-hftoken-env-53c1d9e7aa",
    "api_key_arg": "TbPlant-apikey-arg-0b7f3e2c19",
    "hf_token_arg": "TbPlant-hftoken-arg-6a9d1c4e70",
    "middleware": "TbPlant-middleware-2e8b5f0d3c",
    "set": "TbPlant-set-value-7c3a0e9b12",
}
USER = "benchuser"


@pytest.fixture
def capture() -> Iterator[tuple[Capture, str]]:
    cap = Capture()
    gen = serve_capture(cap)
    url = next(gen)
    yield cap, url
    gen.close()


def _run_folder_text(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes; Parquet files as their data (all columns, JSON) plus their raw bytes."""
    out: dict[str, bytes] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
            data += json.dumps(rows, default=str).encode()
        out[str(path.relative_to(run_dir))] = data
    return out


def test_planted_keys_reach_only_the_authorization_header(tmp_path: Path, capture) -> None:
    cap, url = capture
    shim = tmp_path / "python"
    shim.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(REPO / "tests/echo_args_python.py"))} "$@"\n'
    )
    shim.chmod(0o755)
    host = url.removeprefix("http://")
    scenario = {
        "name": "secrets",
        "servers": [
            {"name": "bearer", "backend": "external", "model": "sim-model", "base_url": url + "/v1",
             "api_key_env": "TB_PLANTED_KEY"},
            {"name": "basic", "backend": "external", "model": "sim-model",
             "base_url": f"http://{USER}:{KEYS['userinfo']}@{host}/v1"},
            {"name": "launched", "backend": "sim", "model": "sim-model", "python": str(shim),
             "env": {"HF_TOKEN": KEYS["env"]},
             "args": ["--api-key", KEYS["api_key_arg"], f"--hf-token={KEYS['hf_token_arg']}",
                      "--middleware", f"Bearer {KEYS['middleware']}"],
             "settings": {"ttft_ms": 2, "itl_ms": 1}},
        ],
        "workload": {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 9,
                     "abort_error_rate": 1.0},
    }  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    proc = tokenbench(
        "run", path, "--out", tmp_path / "out", "--set", f"servers.2.env.VLLM_API_KEY={KEYS['set']}",
        extra_env={"TB_PLANTED_KEY": KEYS["api_key_env"]}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = next((tmp_path / "out").glob("*-secrets"))
    files = _run_folder_text(run_dir)

    # Every route was exercised: the wire carried both auth forms, the server echoed them back,
    # and the launched server's log, summary and report hold the redacted forms.
    basic = base64.b64encode(f"{USER}:{KEYS['userinfo']}".encode()).decode()
    auths = {v for r in cap.requests for k, v in r.headers if k.lower() == "authorization"}
    assert auths == {f"Bearer {KEYS['api_key_env']}", f"Basic {basic}"}
    hosts = {v for r in cap.requests for k, v in r.headers if k.lower() == "host"}
    assert hosts == {host}, hosts  # never user:pass@host
    assert cap.echoed_401 >= 4 and cap.echoed_sse >= 4
    records = pq.read_table(run_dir / "records.parquet").to_pandas()
    external = records[records["cell_id"].isin(["bearer", "basic"])]
    for cls in ("http_4xx", "bad_payload"):
        messages = external.loc[external["error_class"] == cls, "error_message"]
        assert len(messages) >= 2 and messages.str.contains("REDACTED").all(), (cls, list(messages))
    server_log = files["cells/launched/server.log"].decode()
    assert "server args:" in server_log and "server env:" in server_log and "REDACTED" in server_log
    summary = json.loads(files["summary.json"])
    launched = next(c for c in summary["cells"] if c["cell_id"] == "launched")
    assert launched["status"] == "ok" and launched["env"]["HF_TOKEN"] == "REDACTED"
    assert launched["env"]["VLLM_API_KEY"] == "REDACTED" and "REDACTED" in launched["command"]
    stored = yaml.safe_load(files["scenario.yaml"])
    assert stored["servers"][1]["base_url"] == f"http://REDACTED@{host}/v1"
    assert stored["servers"][2]["env"] == {"HF_TOKEN": "REDACTED", "VLLM_API_KEY": "REDACTED"}
    assert b"REDACTED" in files["report.html"]

    # ... and no key, in any form, anywhere but the Authorization header on the wire.
    forms = {**KEYS, "userinfo as Basic": basic}
    streams = {**files, "stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    leaks = [
        (where, name)
        for name, form in forms.items()
        for where, blob in streams.items()
        if form.encode() in blob
    ]
    assert not leaks, leaks
    assert not [n for n, blob in files.items() if PREFIX.encode() in blob]
    assert PREFIX not in proc.stdout + proc.stderr
    # The capture server's view, minus the one header that must carry the key.
    wire = [r.raw() for r in cap.requests]
    for raw in wire:
        without_auth = b"\n".join(
            line for line in raw.split(b"\n") if not line.lower().startswith(b"authorization:")
        )
        assert PREFIX.encode() not in without_auth and basic.encode() not in without_auth
