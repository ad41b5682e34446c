"""Official clients consume the sim: the OpenAI SDK and HF's ``text-generation`` client."""

from __future__ import annotations

import httpx
import openai
import pytest
from text_generation import Client as TgiClient


def test_openai_client_streams_completions_and_chat(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, model="sim-7b")
    client = openai.OpenAI(base_url=sim.base_url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["sim-7b"]
    stream = client.completions.create(
        model="sim-7b",
        prompt="a b c d",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " tok" * 6
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == 4
    chat = client.chat.completions.create(
        model="sim-7b",
        messages=[{"role": "user", "content": "hi there"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    parts = list(chat)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == " tok" * 5
    assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "length"
    whole = client.chat.completions.create(
        model="sim-7b",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        extra_body={"ignore_eos": True},
    )
    assert whole.choices[0].message.content == " tok" * 3 and whole.usage is not None
    assert whole.usage.total_tokens == 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_text_generation_client_parses_generate_and_stream(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, api="tgi")
    client = TgiClient(sim.base_url)
    tokens = list(client.generate_stream("one two three", max_new_tokens=7))
    assert [t.token.text for t in tokens] == [" tok"] * 7
    assert all(t.details is None for t in tokens[:-1])
    assert tokens[-1].details is not None and tokens[-1].details.generated_tokens == 7
    assert tokens[-1].details.finish_reason.value == "length"
    assert tokens[-1].generated_text == " tok" * 7
    response = client.generate("one two", max_new_tokens=4)
    assert response.generated_text == " tok" * 4
    assert response.details.generated_tokens == 4 and len(response.details.tokens) == 4


def test_tgi_native_routes(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, api="tgi", tokens_per_chunk=3, model="org/tgi-m")
    with httpx.Client(base_url=sim.base_url) as c:
        info = c.get("/info").json()
        assert info["model_id"] == "org/tgi-m" and info["max_total_tokens"] > 0
        r = c.post("/generate", json={"inputs": "a b", "parameters": {"max_new_tokens": 5}})
        assert r.json()["generated_text"] == " tok" * 5
        r = c.post("/generate_stream", json={"inputs": "a b", "parameters": {"max_new_tokens": 5}})
        events = [e for e in r.text.split("\n\n") if e]
        assert all(e.startswith('data:{"index":') for e in events)
        assert len(events) == 5
        bad = c.post("/generate", json={"parameters": {}})
        assert bad.status_code == 400 and "inputs" in bad.json()["error"]
        metrics = c.get("/metrics").text
    for name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_request_count", "tgi_request_success"):
        assert f"\n{name} " in metrics
    assert "vllm:" not in metrics
    sim.stop()
    stream_truth = [t for t in sim.truth().values() if len(t.chunk_tokens) > 1]
    assert [t.chunk_tokens for t in stream_truth] == [[1, 3, 1]]


@pytest.mark.parametrize("api", ["openai", "tgi"])
def test_both_apis_are_always_served(sim_server, api: str) -> None:
    sim = sim_server(ttft_ms=0, itl_ms=0, api=api)
    r1 = httpx.post(
        sim.base_url + "/v1/completions", json={"prompt": "a", "max_tokens": 2, "ignore_eos": True}
    )
    r2 = httpx.post(sim.base_url + "/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 2}})
    assert r1.status_code == r2.status_code == 200
