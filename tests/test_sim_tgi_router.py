"""The sim's TGI router behaviour, which the fake TGI launcher maps TGI's flags onto:
``/info`` limits and version, 429 above ``--max-concurrent-requests``, 422 for inputs over
``--max-input-tokens`` / ``--max-model-len``, and no ``ignore_eos`` (``--no-ignore-eos``)."""

from __future__ import annotations

import threading

import httpx


def _stream(base: str, words: int, new: int, out: list[int], started: threading.Event | None = None) -> None:
    body = {"inputs": " ".join(["w"] * words), "parameters": {"max_new_tokens": new}}
    with httpx.stream("POST", f"{base}/generate_stream", json=body, timeout=10) as r:
        out.append(r.status_code)
        if started is not None:
            started.set()
        r.read()


def test_info_reports_the_router_limits_and_version(sim_server) -> None:
    sim = sim_server(
        api="tgi", model="org/m", max_model_len=512, max_input_tokens=400, max_concurrent_requests=3
    )
    info = httpx.get(sim.base_url + "/info", timeout=5).json()
    assert (info["model_id"], info["version"]) == ("org/m", "3.3.7")
    assert (info["max_concurrent_requests"], info["max_input_tokens"], info["max_total_tokens"]) == (
        3,
        400,
        512,
    )


def test_over_max_concurrent_requests_is_429_overloaded(sim_server) -> None:
    # The first stream holds the only slot for 0.4 s + 4 × 0.3 s; the second request goes once the first's
    # response has begun (not after a fixed sleep, which a stalled CI machine outlasted), so it is refused.
    sim = sim_server(api="tgi", ttft_ms=400, itl_ms=300, max_concurrent_requests=1)
    first: list[int] = []
    started = threading.Event()
    t = threading.Thread(target=_stream, args=(sim.base_url, 4, 4, first, started))
    t.start()
    assert started.wait(10)
    body = {"inputs": "a b", "parameters": {"max_new_tokens": 2}}
    r = httpx.post(sim.base_url + "/generate_stream", json=body, timeout=10)
    t.join()
    assert first == [200]
    assert r.status_code == 429 and r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert httpx.post(sim.base_url + "/generate_stream", json=body, timeout=10).status_code == 200  # freed


def test_inputs_over_the_limits_are_422(sim_server) -> None:
    sim = sim_server(api="tgi", ttft_ms=1, itl_ms=1, max_model_len=20, max_input_tokens=10)
    too_long = {"inputs": " ".join(["w"] * 11), "parameters": {"max_new_tokens": 2}}
    r = httpx.post(sim.base_url + "/generate_stream", json=too_long, timeout=5)
    assert r.status_code == 422 and "must have less than 10 tokens" in r.json()["error"]
    total = {"inputs": " ".join(["w"] * 10), "parameters": {"max_new_tokens": 11}}
    r = httpx.post(sim.base_url + "/generate_stream", json=total, timeout=5)
    assert r.status_code == 422 and "must be <= 20" in r.json()["error"]


def test_no_ignore_eos_drops_ignore_eos_on_every_api(sim_server) -> None:
    sim = sim_server(api="tgi", ttft_ms=0, itl_ms=0, no_ignore_eos=True)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
            "ignore_eos": True, "min_tokens": 50}  # fmt: skip
    lengths = []
    for _ in range(8):
        r = httpx.post(sim.base_url + "/v1/chat/completions", json=chat, timeout=5).json()
        lengths.append(r["usage"]["completion_tokens"])
        body = {"inputs": "a", "parameters": {"max_new_tokens": 50, "details": True}}
        lengths.append(
            httpx.post(sim.base_url + "/generate", json=body, timeout=5).json()["details"]["generated_tokens"]
        )
    assert all(1 <= n <= 50 for n in lengths) and min(lengths) < 50  # ends at a seeded natural EOS
    plain = sim_server(api="tgi", ttft_ms=0, itl_ms=0)
    r = httpx.post(plain.base_url + "/v1/chat/completions", json=chat, timeout=5).json()
    assert r["usage"]["completion_tokens"] == 50  # without the flag the sim honours ignore_eos
