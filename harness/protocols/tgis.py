"""``tgis``: TGIS's gRPC ``fmaas.GenerationService/GenerateStream`` (vllm-tgis-adapter, the sim).

How a TGIS stream is read (``interpret_tgis``):

* **the first message is an acknowledgement** (``input_token_count`` only, no
  tokens): it is not the first token. A chunk is a message that advances the
  cumulative ``generated_token_count``; its token count is that advance;
* **fixed length**: TGIS has no ``ignore_eos``; ``min_new_tokens ==
  max_new_tokens`` asks for exactly that many tokens;
* **end of stream**: a message with a ``stop_reason`` other than
  NOT_FINISHED; ``stop_reason: ERROR`` is an error the server reported;
* **counts**: output tokens are the last message's ``generated_token_count``
  (``token_source="usage"`` when the stream finished, ``"usage_per_chunk"``
  when it was cut), prompt tokens the ack's ``input_token_count``. The
  client's own count is the streamed text retokenized (n/a without a
  tokenizer), never the server's counters.

Ready: gRPC health ``SERVING`` (where the server implements the health
service; the sim does not), then ``ModelInfo`` for the served model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from harness.protocols.base import Endpoint, Event, GrpcProbe, ProtocolSpec, StreamResult, prompt_text
from harness.protocols.grpc_health import HEALTH_PROBE
from harness.protocols.proto import generation_pb2 as pb

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

METHOD = "/fmaas.GenerationService/GenerateStream"
MODEL_INFO = "/fmaas.GenerationService/ModelInfo"


def tgis_request(plan: LoadPlan, prompt: PromptSpec) -> pb.SingleGenerationRequest:
    """The ``SingleGenerationRequest`` for one prompt."""
    n = prompt.output_tokens
    stopping = pb.StoppingCriteria(max_new_tokens=n, min_new_tokens=n if plan.ignore_eos else 0)
    params = pb.Parameters(
        method=pb.SAMPLE if plan.temperature > 0 else pb.GREEDY,
        stopping=stopping,
        sampling=pb.SamplingParameters(temperature=plan.temperature) if plan.temperature > 0 else None,
    )
    return pb.SingleGenerationRequest(
        model_id=plan.model, request=pb.GenerationRequest(text=prompt_text(prompt)), params=params
    )


def interpret_tgis(events: list[Event]) -> StreamResult:
    """Chunks and counts from a finished (or cut) stream of raw ``GenerationResponse`` bytes."""
    res = StreamResult(per_chunk_usage=True)
    texts: list[str] = []
    last = 0
    parse = pb.GenerationResponse.FromString
    for arrival_ns, raw in events:
        try:
            msg = parse(raw)
        except DecodeError as err:
            res.error = f"undecodable GenerationResponse: {err}"
            break
        if msg.input_token_count and res.prompt_tokens is None:
            res.prompt_tokens = int(msg.input_token_count)
        count = int(msg.generated_token_count)
        if count > last:
            res.chunk_times_ns.append(arrival_ns)
            res.chunk_tokens.append(count - last)
            last = count
        if msg.text:
            texts.append(msg.text)
        if msg.stop_reason == pb.ERROR:
            res.error = "server ended the stream with stop_reason ERROR"
        elif msg.stop_reason != pb.NOT_FINISHED:
            res.finished = True
    if events:
        res.completion_tokens = last
        res.usage_source = "usage" if res.finished else "usage_per_chunk"
    res.text = "".join(texts)
    return res


def _model_info_request(endpoint: Endpoint) -> bytes:
    return pb.ModelInfoRequest(model_id=endpoint.model).SerializeToString()


def _model_info_ok(raw: bytes) -> str | None:
    try:
        info = pb.ModelInfoResponse.FromString(raw)
    except DecodeError as err:
        return f"ModelInfo answered something undecodable: {err}"
    return None if info.max_sequence_length > 0 else "ModelInfo reports max_sequence_length 0"


@dataclass(frozen=True)
class TgisProtocol(ProtocolSpec):
    def build_request(self, plan: LoadPlan, prompt: PromptSpec) -> bytes:
        return tgis_request(plan, prompt).SerializeToString()

    def interpret(self, events: list[Event]) -> StreamResult:
        return interpret_tgis(events)


SPEC = TgisProtocol(
    name="tgis",
    transport="grpc",
    path=METHOD,
    prompt_style="text",
    token_source="usage (generated_token_count of the last message)",
    readiness=(HEALTH_PROBE, GrpcProbe(MODEL_INFO, _model_info_request, _model_info_ok)),
)
