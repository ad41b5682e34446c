"""Caikit's gRPC ``caikit.runtime.Nlp.NlpService/ServerStreamingTextGenerationTaskPredict`` on the sim.

Wire behaviour follows the real runtime (caikit 0.28.3 + caikit-nlp 0.5.15 forwarding to the vLLM
TGIS adapter; ``tests/data/streams/caikit-grpc-*.json``):

* the model is the ``mm-model-id`` metadata value: missing is ``INVALID_ARGUMENT`` ("Missing
  required model ID"), unknown is ``NOT_FOUND`` ("Model 'x' not loaded");
* the first message carries only ``details.input_token_count``; then one message per chunk with
  the chunk's ``generated_text`` and the cumulative ``details.generated_tokens``; the last has
  ``details.finish_reason`` ``MAX_TOKENS`` (``EOS_TOKEN`` when the sim stops early);
* no ``ignore_eos``: the length is drawn between ``min_new_tokens`` and ``max_new_tokens``
  (default 20), and ``min_new_tokens > max_new_tokens`` is ``INVALID_ARGUMENT``.

Timing, faults, counters and the write log are the TGIS servicer's (``TgisServicer.stream``), so
Caikit and TGIS on one sim are measured by the same code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from harness.protocols.proto import caikit_data_model_nlp_pb2 as dm
from harness.protocols.proto import caikit_nlp_pb2_grpc as pb_grpc
from harness.sim.generation import TOKEN_TEXT, GenSpec, Plan
from harness.sim.tgis_grpc import TgisServicer

DEFAULT_MAX_NEW_TOKENS = 20
MODEL_KEY = "mm-model-id"


def caikit_spec(request: Any, model: str) -> GenSpec:
    max_new = request.max_new_tokens if request.HasField("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS
    return GenSpec(
        api="caikit-grpc",
        model=model,
        prompt_tokens=len(request.text.split()),
        max_tokens=max_new,
        min_tokens=request.min_new_tokens,
        stream=True,
    )


class CaikitServicer(pb_grpc.NlpServiceServicer):
    """Serves Caikit's streaming text generation on behalf of one ``SimServer`` via its TGIS servicer."""

    def __init__(self, tgis: TgisServicer) -> None:
        self.tgis = tgis

    async def ServerStreamingTextGenerationTaskPredict(  # noqa: N802
        self, request: Any, context: aio.ServicerContext
    ) -> AsyncIterator[Any]:
        arrival = time.monotonic_ns()
        model = self.tgis.sim.opts.model
        meta = dict(context.invocation_metadata() or ())
        asked = meta.get(MODEL_KEY)
        if not asked:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing required model ID")
        if asked != model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Model '{asked}' not loaded")
        spec = caikit_spec(request, model)
        if spec.max_tokens < 1 or spec.min_tokens > spec.max_tokens:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"value check failed: Maximum new tokens [{spec.max_tokens}] has to be greater than "
                f"minimum new tokens [{spec.min_tokens}]",
            )

        def ack() -> Any:
            return dm.GeneratedTextStreamResult(
                details=dm.TokenStreamDetails(input_token_count=spec.prompt_tokens)
            )

        def message(sent: int, count: int, first: bool, last: bool, plan: Plan) -> Any:
            finish = dm.MAX_TOKENS if plan.finish_reason == "length" else dm.EOS_TOKEN
            return dm.GeneratedTextStreamResult(
                generated_text=TOKEN_TEXT * count,
                details=dm.TokenStreamDetails(
                    generated_tokens=sent + count, finish_reason=finish if last else dm.NOT_FINISHED
                ),
            )

        async for msg in self.tgis.stream(spec, context, arrival, ack, message):
            yield msg
