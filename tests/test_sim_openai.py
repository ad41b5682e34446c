"""The sim's OpenAI surface: vLLM-shaped streams, exact lengths and usage, true timings."""

from __future__ import annotations

import json

import httpx
import pytest

EARLY_NS = 100_000  # the sim may write a chunk up to 0.1 ms before its due time


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


def test_completions_stream_is_vllm_shaped_with_exact_tokens(sim_server) -> None:
    sim = sim_server(ttft_ms=20, itl_ms=2, model="my-model")
    body = {
        "model": "my-model",
        "prompt": "w " * 7,
        "max_tokens": 9,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = httpx.post(sim.base_url + "/v1/completions", json=body, headers={"X-Request-Id": "req-7"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    token_chunks = [c for c in chunks if c["choices"]]
    assert len(token_chunks) == 9
    assert all(c["object"] == "text_completion" and c["model"] == "my-model" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert "".join(c["choices"][0]["text"] for c in token_chunks) == " tok" * 9
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * 8 + ["length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    sim.stop()
    truth = sim.truth()
    assert list(truth) == ["req-7"]
    t = truth["req-7"]
    assert t.prompt_tokens == 7 and t.output_tokens == 9 and len(t.chunk_times_ns) == 9
    assert t.ttft_ns is not None and t.ttft_ns >= 20_000_000 - EARLY_NS
    assert all(gap >= 0 for gap in t.itls_ns)
    assert t.chunk_times_ns[-1] - t.arrival_ns >= 20_000_000 + 8 * 2_000_000 - EARLY_NS


def test_continuous_usage_counts_up_on_every_chunk(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1)
    body = {
        "prompt": "a b c",
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = [
        json.loads(e) for e in sse_events(httpx.post(sim.base_url + "/v1/completions", json=body).text)[:-1]
    ]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4, 4]
    assert all(c["usage"]["prompt_tokens"] == 3 for c in chunks)


def test_chat_stream_opens_with_role_chunk(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1)
    body = {
        "messages": [{"role": "system", "content": "x y"}, {"role": "user", "content": "a b c"}],
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = [
        json.loads(e)
        for e in sse_events(httpx.post(sim.base_url + "/v1/chat/completions", json=body).text)[:-1]
    ]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert content == [" tok"] * 5
    assert chunks[-1]["usage"]["prompt_tokens"] == 5


def test_natural_stop_respects_min_and_max_and_is_seeded(sim_server) -> None:
    def lengths(seed: int) -> list[int]:
        sim = sim_server(ttft_ms=0, itl_ms=0, seed=seed)
        out = []
        for _ in range(20):
            r = httpx.post(
                sim.base_url + "/v1/completions", json={"prompt": "a", "max_tokens": 30, "min_tokens": 10}
            )
            out.append(r.json()["usage"]["completion_tokens"])
        sim.stop()
        return out

    first, again = lengths(5), lengths(5)
    assert first == again
    assert all(10 <= n <= 30 for n in first)
    assert len(set(first)) > 1


def test_non_streaming_waits_for_the_whole_answer(sim_server) -> None:
    sim = sim_server(ttft_ms=30, itl_ms=5)
    r = httpx.post(
        sim.base_url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True},
    )
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": " tok" * 4}
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    sim.stop()
    (t,) = sim.truth().values()
    assert t.chunk_times_ns[0] - t.arrival_ns >= 30_000_000 + 3 * 5_000_000 - EARLY_NS


def test_tokens_per_chunk_groups_tokens_after_the_first(sim_server) -> None:
    sim = sim_server(ttft_ms=1, itl_ms=1, tokens_per_chunk=4)
    body = {"prompt": "a", "max_tokens": 10, "ignore_eos": True, "stream": True}
    chunks = [
        json.loads(e) for e in sse_events(httpx.post(sim.base_url + "/v1/completions", json=body).text)[:-1]
    ]
    assert [c["choices"][0]["text"].count("tok") for c in chunks] == [1, 4, 4, 1]
    sim.stop()
    (t,) = sim.truth().values()
    assert t.chunk_tokens == [1, 4, 4, 1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(sim_server, body: dict, field: str) -> None:
    sim = sim_server()
    r = httpx.post(sim.base_url + "/v1/completions", json=body)
    assert r.status_code == 400
    assert field in r.json()["message"]
    assert r.json()["object"] == "error"


def test_models_health_version_and_unknown_path(sim_server) -> None:
    sim = sim_server(model="org/m")
    with httpx.Client(base_url=sim.base_url) as c:
        assert c.get("/health").status_code == 200
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["org/m"]
        assert "sim.exact" in c.get("/version").json()["version"]
        assert c.get("/nope").status_code == 404


def test_keep_alive_serves_many_requests_on_one_connection(sim_server) -> None:
    sim = sim_server(ttft_ms=0, itl_ms=0)
    transport = httpx.HTTPTransport(retries=0)
    with httpx.Client(base_url=sim.base_url, transport=transport) as c:
        for _ in range(5):
            r = c.post(
                "/v1/completions", json={"prompt": "a", "max_tokens": 2, "ignore_eos": True, "stream": True}
            )
            assert sse_events(r.text)[-1] == "[DONE]"
    assert sim.output().count("listening") == 1


def test_metrics_use_vllm_names_and_count_tokens(sim_server) -> None:
    sim = sim_server(ttft_ms=0, itl_ms=0, model="m")
    for _ in range(3):
        httpx.post(
            sim.base_url + "/v1/completions", json={"prompt": "a b", "max_tokens": 4, "ignore_eos": True}
        )
    text = httpx.get(sim.base_url + "/metrics").text
    values = {
        line.split(" ")[0].split("{")[0]: float(line.split(" ")[-1])
        for line in text.splitlines()
        if line and not line.startswith("#") and "request_success" not in line
    }
    assert values["vllm:prompt_tokens_total"] == 6
    assert values["vllm:generation_tokens_total"] == 12
    assert values["vllm:num_requests_running"] == 0
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total"):
        assert name in values
    assert 'tokenbench_sim_info{mode="exact"' in text
