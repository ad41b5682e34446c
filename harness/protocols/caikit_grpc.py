"""``caikit-grpc``: Caikit's ``caikit.runtime.Nlp.NlpService/ServerStreamingTextGenerationTaskPredict``.

The model is chosen by the ``mm-model-id`` metadata key, not by a field.
Stream rules are Caikit's (``harness.protocols.caikit``); messages are
``caikit_data_model.nlp.GeneratedTextStreamResult``, decoded only after the
stream is over. Greedy unless the workload asks for a temperature; with
``ignore_eos`` the request pins ``min_new_tokens == max_new_tokens``.

Ready: gRPC health ``SERVING`` (the runtime registers the standard health
service), then ``caikit.runtime.info.InfoService/GetRuntimeInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from harness.protocols.base import Endpoint, Event, GrpcProbe, ProtocolSpec, StreamResult, prompt_text
from harness.protocols.caikit import CaikitStream
from harness.protocols.grpc_health import HEALTH_PROBE

if TYPE_CHECKING:
    from harness.load.plan import LoadPlan
    from harness.load.prompts import PromptSpec

METHOD = "/caikit.runtime.Nlp.NlpService/ServerStreamingTextGenerationTaskPredict"
RUNTIME_INFO = "/caikit.runtime.info.InfoService/GetRuntimeInfo"
MODEL_METADATA_KEY = "mm-model-id"


def caikit_request(plan: LoadPlan, prompt: PromptSpec) -> bytes:
    """The serialized ``ServerStreamingTextGenerationTaskRequest`` for one prompt."""
    from harness.protocols.proto import caikit_nlp_pb2 as pb

    n = prompt.output_tokens
    req = pb.ServerStreamingTextGenerationTaskRequest(text=prompt_text(prompt), max_new_tokens=n)
    if plan.ignore_eos:
        req.min_new_tokens = n
    if plan.temperature > 0:
        req.decoding_method = "SAMPLING"
        req.temperature = plan.temperature
    else:
        req.decoding_method = "GREEDY"
    return req.SerializeToString()


def interpret_caikit_grpc(events: list[Event]) -> StreamResult:
    """Chunks and counts from raw ``GeneratedTextStreamResult`` messages (rules in ``caikit``)."""
    from harness.protocols.proto import caikit_data_model_nlp_pb2 as nlp

    stream = CaikitStream()
    parse = nlp.GeneratedTextStreamResult.FromString
    reason_name = nlp.FinishReason.Name
    for arrival_ns, raw in events:
        try:
            msg = parse(raw)
        except DecodeError as err:
            stream.res.error = f"undecodable GeneratedTextStreamResult: {err}"
            break
        d = msg.details
        finish = reason_name(d.finish_reason) if d.finish_reason in nlp.FinishReason.values() else "UNKNOWN"
        stream.add(arrival_ns, msg.generated_text, int(d.generated_tokens), int(d.input_token_count), finish)
    return stream.result(bool(events))


def _runtime_info_ok(raw: bytes) -> str | None:
    return None  # any well-formed answer: the runtime is up and serving its services


@dataclass(frozen=True)
class CaikitGrpcProtocol(ProtocolSpec):
    def build_request(self, plan: LoadPlan, prompt: PromptSpec) -> bytes:
        return caikit_request(plan, prompt)

    def interpret(self, events: list[Event]) -> StreamResult:
        return interpret_caikit_grpc(events)

    def grpc_metadata(self, plan: LoadPlan) -> list[tuple[str, str]]:
        return [(MODEL_METADATA_KEY, plan.model)]


def _empty(_endpoint: Endpoint) -> bytes:
    return b""


SPEC = CaikitGrpcProtocol(
    name="caikit-grpc",
    transport="grpc",
    path=METHOD,
    prompt_style="text",
    token_source="usage (details.generated_tokens of the last message)",
    readiness=(HEALTH_PROBE, GrpcProbe(RUNTIME_INFO, _empty, _runtime_info_ok)),
)
