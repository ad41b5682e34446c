"""``tgi``: Hugging Face TGI's native streaming API, ``POST /generate_stream``.

How a TGI stream is read (``interpret_tgi``):

* every ``data:`` event carries one token (``token``), so each event is one
  chunk of one token, stamped with the read that completed it. The count of
  token events is the client's own output count (``client_tokens``): it comes
  from the stream's pieces, not from the server's figure;
* the final event carries ``generated_text`` and ``details``;
  ``details.generated_tokens`` is the server's output count
  (``token_source="usage"``) and ``details.input_length``, where the server
  sends it (TGI >= 2.1), the prompt count; older TGIs send no prompt count in
  the stream, so the record falls back to the exact prompt length or the
  tokenizer. The final event is the end of the stream;
* an ``{"error": ...}`` event is an error the server reported mid-stream.

TGI has no ``ignore_eos``: a fixed output length is up to the server (the sim
always generates ``max_new_tokens``). The record's ``requested_output_tokens``
says what was asked for, so a short answer shows up as a token disagreement,
not silently. TGI rejects ``temperature: 0`` ("must be strictly positive"),
so greedy decoding is asked for by leaving sampling off instead.

Ready: ``GET /health`` (the model is loaded), then ``GET /info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from harness.load.sseframe import event_data
from harness.protocols.base import Event, HttpProbe, ProtocolSpec, StreamResult, prompt_text, typed

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

PATH = "/generate_stream"


def tgi_body(plan: LoadPlan, prompt: PromptSpec) -> dict[str, Any]:
    """The ``/generate_stream`` request for one prompt."""
    params: dict[str, Any] = {
        "max_new_tokens": prompt.output_tokens,
        "details": True,
        "decoder_input_details": False,
    }
    if plan.temperature > 0:
        params["do_sample"] = True
        params["temperature"] = plan.temperature
    else:
        params["do_sample"] = False
    return {"inputs": prompt_text(prompt), "parameters": params}


def interpret_tgi(events: list[Event]) -> StreamResult:
    """Turn raw SSE events of ``/generate_stream`` into chunks and token counts (see module docstring)."""
    res = StreamResult()
    texts: list[str] = []
    for arrival_ns, raw in events:
        data = event_data(raw)
        if data is None:
            continue  # comments / keep-alives / other fields
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            res.error = f"malformed JSON in stream event: {err}: {data[:200]!r}"
            break
        if not isinstance(obj, dict):
            res.error = f"stream event is not a JSON object: {data[:200]!r}"
            break
        if obj.get("error") is not None:
            kind = obj.get("error_type")
            res.error = f"error event in stream ({kind}): {str(obj['error'])[:500]}"
            break
        token = typed(obj, "token", dict)
        if token is not None:
            res.chunk_times_ns.append(arrival_ns)
            res.chunk_tokens.append(1)
            if not typed(token, "special", bool):
                texts.append(typed(token, "text", str) or "")
        details = typed(obj, "details", dict)
        if details is not None:
            generated = typed(details, "generated_tokens", int)
            if generated is not None:
                res.completion_tokens = generated
                res.usage_source = "usage"
            prompt = typed(details, "input_length", int)
            if prompt is not None:
                res.prompt_tokens = prompt
            res.finished = True
        elif typed(obj, "generated_text", str) is not None:
            res.finished = True  # details were not asked for (or stripped): still the last event
    res.text = "".join(texts)
    res.client_tokens = len(res.chunk_tokens)
    return res


@dataclass(frozen=True)
class TgiProtocol(ProtocolSpec):
    def build_request(self, plan: LoadPlan, prompt: PromptSpec) -> bytes:
        return orjson.dumps(tgi_body(plan, prompt))

    def interpret(self, events: list[Event]) -> StreamResult:
        return interpret_tgi(events)


SPEC = TgiProtocol(
    name="tgi",
    transport="http",
    path=PATH,
    prompt_style="text",
    token_source="usage (details.generated_tokens of the final event); client: one token per event",
    readiness=(HttpProbe("/health"), HttpProbe("/info")),
)
