"""Caikit's HTTP text generation (``/api/v1/task/...``), in the real runtime's exact bytes.

Why byte-exact: the shapes are copied from caikit 0.28.3 + caikit-nlp 0.5.15 forwarding to the
vLLM TGIS adapter (``tests/data/streams/caikit-http-*.json``), so a client that works against the
sim works against the real runtime:

* the stream is SSE from sse-starlette: ``event: message`` / ``data: {...}``, CRLF line ends, no
  ``[DONE]``; each ``data`` is a ``GeneratedTextStreamResult`` as Python's ``json.dumps`` writes it
  (every field present, ``", "`` and ``": "`` separators);
* the first message carries ``details.input_token_count`` and no token, then one message per chunk
  with the chunk's text and the cumulative ``details.generated_tokens``; the last has
  ``finish_reason`` ``MAX_TOKENS`` (or ``EOS_TOKEN``). The sim writes the first message together
  with the first token (``StreamFormat`` writes at token times only); the real runtime sends it
  when TGIS reports the prompt, a few ms earlier; clients time TTFT from the first token anyway;
* request errors on the streaming route (unknown ``model_id``, bad parameters) are **HTTP 200**
  with one ``event: error`` carrying ``{"details", "code", "id"}``; a body that is not JSON is
  HTTP 422. Like TGIS, Caikit has no ``ignore_eos``: a fixed length is ``min_new_tokens ==
  max_new_tokens`` (default 20).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from harness.sim.generation import TOKEN_TEXT, BadRequest, GenSpec, Plan, Rejected, count_words, int_field

STREAM_PATH = "/api/v1/task/server-streaming-text-generation"
UNARY_PATH = "/api/v1/task/text-generation"
PATHS = (STREAM_PATH, UNARY_PATH)
SSE_TYPE = b"text/event-stream; charset=utf-8"
DEFAULT_MAX_NEW_TOKENS = 20
PRODUCER = {"name": "Text Generation", "version": "0.1.0"}
INFO_PATHS = ("/info/models", "/info/version")
MODULE_ID = "f9181353-4ccf-4572-bd1e-f12bcda26792"  # caikit-nlp's TextGenerationTGIS


def _error(status: int, message: str) -> dict[str, Any]:
    return {"details": message, "code": status, "id": uuid.uuid4().hex}


def error_body(status: int, message: str) -> bytes:
    """Caikit's error JSON for whole-response errors (and the sim's HTTP faults)."""
    return json.dumps(_error(status, message)).encode()


def error_event(status: int, message: str) -> bytes:
    return b"event: error\r\ndata: " + json.dumps(_error(status, message)).encode() + b"\r\n\r\n"


def parse_caikit(path: str, body: dict[str, Any], model: str) -> GenSpec:
    """Read a Caikit text-generation body; errors are what the real runtime answers."""
    stream = path == STREAM_PATH

    def reject(status: int, message: str) -> Rejected:
        if stream:
            return Rejected(message, 200, error_event(status, message), SSE_TYPE)
        return Rejected(message, status, error_body(status, message))

    model_id = body.get("model_id")
    if model_id != model:
        raise reject(404 if isinstance(model_id, str) else 400, f"Model '{model_id}' not loaded")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise reject(400, f"parameters: expected an object, got {params!r}")
    try:
        if "inputs" not in body:
            raise BadRequest("inputs: missing")
        max_new = int_field(params, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, 1)
        min_new = int_field(params, "min_new_tokens", 0, 0)
        prompt = count_words(body["inputs"], "inputs")
    except BadRequest as err:
        raise reject(400, str(err)) from None
    if min_new > max_new:
        raise reject(
            400,
            f"value check failed: Maximum new tokens [{max_new}] has to be greater than minimum "
            f"new tokens [{min_new}]",
        )
    return GenSpec(
        api="caikit-http",
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_new,
        min_tokens=min_new,
        stream=stream,
    )


def finish_name(plan: Plan) -> str:
    return "MAX_TOKENS" if plan.finish_reason == "length" else "EOS_TOKEN"


def _message(text: str, finish: str, generated: int, input_count: int) -> bytes:
    result = {
        "generated_text": text,
        "tokens": [],
        "details": {
            "finish_reason": finish,
            "generated_tokens": generated,
            "seed": 0,
            "input_token_count": input_count,
        },
        "producer_id": None,
        "input_tokens": [],
    }
    return b"event: message\r\ndata: " + json.dumps(result).encode() + b"\r\n\r\n"


class CaikitFormat:
    """Bytes for one Caikit text-generation request (streamed or unary)."""

    content_type = SSE_TYPE

    def __init__(self, spec: GenSpec, plan: Plan) -> None:
        self.spec = spec
        self.plan = plan

    def chunk(self, sent: int, count: int, first: bool, last: bool) -> bytes:
        head = _message("", "NOT_FINISHED", 0, self.spec.prompt_tokens) if first else b""
        finish = finish_name(self.plan) if last else "NOT_FINISHED"
        return head + _message(TOKEN_TEXT * count, finish, sent + count, 0)

    def tail(self) -> bytes:
        return b""

    def malformed(self) -> bytes:
        return b'event: message\r\ndata: {"generated_text": <<not json\r\n\r\n'

    def body(self) -> bytes:
        return json.dumps(
            {
                "generated_text": TOKEN_TEXT * self.plan.n_tokens,
                "generated_tokens": self.plan.n_tokens,
                "finish_reason": finish_name(self.plan),
                "producer_id": PRODUCER,
                "input_token_count": self.spec.prompt_tokens,
                "seed": None,
                "tokens": [],
                "input_tokens": [],
            }
        ).encode()


def info_body(path: str, model: str) -> bytes:
    """``GET /info/models`` (one loaded model) or ``/info/version``, as the real runtime answers."""
    if path == "/info/version":
        return json.dumps({"runtime_version": "", "python_packages": {"caikit": "sim"}}).encode()
    info = {
        "model_path": f"/sim/models/{model}",
        "name": model,
        "size": 0,
        "metadata": {},
        "loaded": True,
        "module_id": MODULE_ID,
        "module_metadata": {"name": "Text Generation", "version": "0.1.0"},
    }
    return json.dumps({"models": [info]}).encode()
