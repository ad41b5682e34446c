"""TGI's native API (``/generate``, ``/generate_stream``, ``/``, ``/info``), in TGI's exact JSON.

Why ``data:`` with no space and one event per token: that is what TGI's
router emits and what the official ``text-generation`` client parses. TGI has
no ``ignore_eos``, and benchmarks drive it with fixed lengths, so the sim
always generates ``max_new_tokens`` here (finish reason ``length``). Several
tokens per chunk become several events in one socket write.
"""

from __future__ import annotations

from typing import Any

import orjson

from harness.sim.generation import TOKEN_ID, TOKEN_TEXT, BadRequest, GenSpec, Plan, count_words, int_field

TGI_VERSION = "3.3.7"
DEFAULT_MAX_NEW_TOKENS = 100
# What /info reports when the sim enforces no --max-concurrent-requests (its socket backlog).
UNLIMITED_CONCURRENT_REQUESTS = 4096


def parse_tgi(path: str, body: dict[str, Any], model: str) -> GenSpec:
    if "inputs" not in body:
        raise BadRequest("inputs: missing")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"parameters: expected an object, got {params!r}")
    stream = path == "/generate_stream" or (path == "/" and bool(body.get("stream", False)))
    return GenSpec(
        api="tgi",
        model=model,
        prompt_tokens=count_words(body["inputs"], "inputs"),
        max_tokens=int_field(params, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, 1),
        ignore_eos=True,
        stream=stream,
    )


def error_body(status: int, message: str) -> bytes:
    kind = {400: "validation", 429: "overloaded", 503: "overloaded"}.get(status, "generation")
    return orjson.dumps({"error": message, "error_type": kind})


def _token(index: int) -> bytes:
    return b'{"id":%d,"text":"%s","logprob":-0.125,"special":false}' % (
        TOKEN_ID + index % 1000,
        TOKEN_TEXT.encode(),
    )


class TgiFormat:
    """Bytes for one TGI request. ``list_body`` wraps the non-stream answer in a list (the ``/`` route)."""

    content_type = b"text/event-stream"

    def __init__(self, spec: GenSpec, plan: Plan, list_body: bool = False) -> None:
        self.spec = spec
        self.plan = plan
        self.list_body = list_body

    def _details(self) -> bytes:
        return b'{"finish_reason":"%s","generated_tokens":%d,"seed":null,"input_length":%d}' % (
            b"length" if self.plan.finish_reason == "length" else b"eos_token",
            self.plan.n_tokens,
            self.spec.prompt_tokens,
        )

    def chunk(self, sent: int, count: int, first: bool, last: bool) -> bytes:
        out = []
        for j in range(count):
            index = sent + j + 1
            final = last and j == count - 1
            tail = (
                b'"generated_text":'
                + orjson.dumps(TOKEN_TEXT * self.plan.n_tokens)
                + b',"details":'
                + self._details()
                if final
                else b'"generated_text":null,"details":null'
            )
            out.append(
                b'data:{"index":%d,"token":%s,%s,"top_tokens":null}\n\n' % (index, _token(index), tail)
            )
        return b"".join(out)

    def tail(self) -> bytes:
        return b""

    def malformed(self) -> bytes:
        return b'data:{"index":0,"token":{"id": <<not json\n\n'

    def body(self) -> bytes:
        n = self.plan.n_tokens
        tokens = b",".join(_token(i + 1) for i in range(n))
        details = self._details()[:-1] + b',"prefill":[],"tokens":[' + tokens + b"]}"
        obj = b'{"generated_text":' + orjson.dumps(TOKEN_TEXT * n) + b',"details":' + details + b"}"
        return b"[" + obj + b"]" if self.list_body else obj


def info_body(
    model: str,
    max_model_len: int,
    *,
    max_concurrent_requests: int | None = None,
    max_input_tokens: int | None = None,
    version: str = TGI_VERSION,
) -> bytes:
    """TGI's ``/info`` (``struct Info`` in router/src/lib.rs), with the sim's limits."""
    return orjson.dumps(
        {
            "model_id": model,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": max_concurrent_requests or UNLIMITED_CONCURRENT_REQUESTS,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": max_input_tokens or max_model_len - 1,
            "max_total_tokens": max_model_len,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": version,
            "sha": None,
            "docker_label": "tokenbench-sim",
        }
    )
