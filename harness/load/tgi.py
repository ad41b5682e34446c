"""TGI's native streaming API (``POST /generate_stream``) for the load users.

Why a protocol mixin and not a full user: the HTTP side is the same as the
OpenAI users' (``httpstream.StreamClient.post`` stamps every socket read; nothing is parsed
until the stream is over), so TGI only differs in the request body and in how
the finished stream is read. ``TgiProtocol`` supplies exactly those hooks and
``tgi_user_class`` puts it in front of ``users.StreamingUser``; this module
itself never imports Locust (which monkey-patches on import), so the parser
is testable in a plain process.

How a TGI stream is read (``interpret_tgi``):

* every ``data:`` event carries one token (``token``), so each event is one
  chunk of one token, stamped with the read that completed it;
* the final event carries ``generated_text`` and ``details``;
  ``details.generated_tokens`` is the server's output count
  (``token_source="usage"``) and ``details.input_length``, where the server
  sends it (TGI >= 2.1), the prompt count; older TGIs send no prompt count in
  the stream, so the record falls back to the exact prompt length or the
  tokenizer;
* an ``{"error": ...}`` event is an error the server reported mid-stream.

TGI has no ``ignore_eos``: a fixed output length is up to the server (the sim
always generates ``max_new_tokens``). The record's ``requested_output_tokens``
says what was asked for, so a short answer shows up as a token disagreement,
not silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import orjson

from harness.load.sse import StreamResult
from harness.load.sseframe import event_data

if TYPE_CHECKING:
    from harness.load.httpstream import Outcome
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

PATH = "/generate_stream"
U = TypeVar("U", bound=type)


def tgi_body(plan: LoadPlan, spec: PromptSpec) -> dict[str, Any]:
    """The ``/generate_stream`` request for one prompt.

    TGI rejects ``temperature: 0`` ("must be strictly positive"), so greedy
    decoding is asked for by leaving sampling off instead.
    """
    params: dict[str, Any] = {
        "max_new_tokens": spec.output_tokens,
        "details": True,
        "decoder_input_details": False,
    }
    if plan.temperature > 0:
        params["do_sample"] = True
        params["temperature"] = plan.temperature
    else:
        params["do_sample"] = False
    return {"inputs": spec.prompt if spec.prompt is not None else spec.text, "parameters": params}


def interpret_tgi(events: list[tuple[int, bytes]]) -> StreamResult:
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
        token = obj.get("token")
        if isinstance(token, dict):
            res.chunk_times_ns.append(arrival_ns)
            res.chunk_tokens.append(1)
            if not token.get("special"):
                texts.append(str(token.get("text") or ""))
        details = obj.get("details")
        if isinstance(details, dict):
            generated = details.get("generated_tokens")
            if isinstance(generated, int):
                res.completion_tokens = generated
                res.usage_source = "usage"
            prompt = details.get("input_length")
            if isinstance(prompt, int):
                res.prompt_tokens = prompt
            res.finished = True
        elif obj.get("generated_text") is not None:
            res.finished = True  # details were not asked for (or stripped): still the last event
    res.text = "".join(texts)
    return res


class TgiProtocol:
    """The TGI hooks of a ``StreamingUser``: path, request body, stream interpretation."""

    path: ClassVar[str] = PATH
    ctx: Any  # the process context StreamingUser sets up

    def build_body(self, spec: PromptSpec) -> dict[str, Any]:
        return tgi_body(self.ctx.plan, spec)

    def interpret(self, outcome: Outcome) -> StreamResult:
        outcome.splitter.close()
        return interpret_tgi(outcome.splitter.events)


def tgi_user_class(base: U) -> U:
    """The abstract TGI Locust user: ``TgiProtocol`` in front of ``base`` (``users.StreamingUser``).

    A factory, so that this module does not import ``users`` (and with it
    Locust); ``users.USER_CLASSES`` calls it once at import.
    """
    return type("TgiUser", (TgiProtocol, base), {"abstract": True, "__module__": __name__})  # type: ignore[return-value]
