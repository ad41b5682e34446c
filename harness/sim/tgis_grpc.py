"""TGIS's gRPC ``fmaas.GenerationService`` on the sim: ``Generate`` and ``GenerateStream``.

Why in the same process and loop as the HTTP server: one request counter,
one write log, one fault plan and (in engine mode) one modelled engine serve
every protocol, so a scenario mixing OpenAI, TGI and TGIS traffic sees one
server, as it would with a real engine.

Wire behaviour follows TGIS:

* ``GenerateStream`` first sends an acknowledgement carrying only
  ``input_token_count`` (clients time TTFT from the first message with
  ``generated_token_count > 0``), then one message per chunk whose ``text`` is
  that chunk's new text and ``generated_token_count`` is cumulative; the last
  has ``stop_reason`` set. ``tokens`` carries per-token details only when
  ``params.response.generated_tokens`` asks for them.
* TGIS has no ``ignore_eos``: the output length is drawn between
  ``min_new_tokens`` and ``max_new_tokens`` (default 20), so a fixed length is
  asked for with ``min_new_tokens == max_new_tokens``.

Exact-mode timing is the same absolute schedule as HTTP (``timing.py``), and
every chunk goes to the write log. HTTP faults map to gRPC status codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from harness.protocols.proto import generation_pb2 as pb
from harness.protocols.proto import generation_pb2_grpc as pb_grpc
from harness.sim.faults import Fault
from harness.sim.generation import TOKEN_TEXT, GenSpec, Plan
from harness.sim.timing import chunk_offsets, chunk_sizes
from harness.sim.writelog import clean_request_id

if TYPE_CHECKING:
    from harness.sim.server import SimServer

DEFAULT_MAX_NEW_TOKENS = 20
EARLY_NS = 100_000
FAULT_STATUS = {
    "http_429": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "http_500": grpc.StatusCode.INTERNAL,
    "http_503": grpc.StatusCode.UNAVAILABLE,
    "reset_before_headers": grpc.StatusCode.UNAVAILABLE,
}


def tgis_spec(text: str, params: Any, model: str) -> GenSpec:
    """The generic request for one TGIS prompt and its ``Parameters``."""
    stopping = params.stopping
    max_new = stopping.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    return GenSpec(
        api="tgis",
        model=model,
        prompt_tokens=len(text.split()),
        max_tokens=max_new,
        min_tokens=min(stopping.min_new_tokens, max_new),
        stream=True,
    )


def _token_infos(count: int, params: Any) -> list[Any]:
    opts = params.response
    if not opts.generated_tokens:
        return []
    return [
        pb.TokenInfo(
            text=TOKEN_TEXT,
            logprob=-0.125 if opts.token_logprobs else 0.0,
            rank=1 if opts.token_ranks else 0,
        )
        for _ in range(count)
    ]


class _Queue:
    """Engine-mode sink: the engine pushes (generated, finished) as iterations end."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()

    def tokens(self, generated: int, finished: bool, t_ns: int) -> None:
        self.q.put_nowait((generated, finished))


class TgisServicer(pb_grpc.GenerationServiceServicer):
    """Serves TGIS on behalf of one ``SimServer`` (its counters, RNGs, faults, log, engine)."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim

    async def _begin(
        self, spec: GenSpec, context: aio.ServicerContext, arrival: int
    ) -> tuple[str, Fault | None]:
        sim = self.sim
        sim.seq += 1
        sim.counters.requests_total += 1
        meta = {k: v for k, v in (context.invocation_metadata() or ())}
        rid = clean_request_id(str(meta.get("x-request-id") or f"sim-{sim.seq}"))
        fault = sim.opts.faults.pick(sim.seq)
        sim.log.arrival(rid, arrival, spec.prompt_tokens, spec.api)
        if fault is not None and fault.kind in FAULT_STATUS:
            sim.log.end(rid, 0, 0, time.monotonic_ns(), fault.kind)
            sim.counters.failure_total += 1
            sim._count_finished()
            await context.abort(FAULT_STATUS[fault.kind], f"simulated fault {fault.kind}")
        if sim.engine is not None:
            try:
                sim.engine.check(spec.prompt_tokens, spec.max_tokens)
            except ValueError as err:
                sim.log.end(rid, 0, 0, time.monotonic_ns(), "context_too_long")
                sim.counters.failure_total += 1
                sim._count_finished()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        sim.counters.prompt_tokens_total += spec.prompt_tokens
        return rid, fault

    async def _chunks(
        self, spec: GenSpec, n_tokens: int, arrival: int, fault: Fault | None
    ) -> AsyncIterator[int]:
        """Yield each chunk's token count when it is due (exact) or sampled (engine)."""
        sim = self.sim
        if sim.engine is not None:
            sink = _Queue()
            seq = sim.engine.submit(spec.prompt_tokens, n_tokens, sink)
            sent = 0
            try:
                while sent < n_tokens:
                    generated, _ = await sink.q.get()
                    yield generated - sent
                    sent = generated
            finally:
                if sent < n_tokens:
                    sim.engine.abort(seq)
            return
        timing = sim.opts.timing
        sizes = chunk_sizes(n_tokens, timing.tokens_per_chunk)
        stall_at = len(sizes) // 2 if fault is not None and fault.kind == "stall" else None
        offsets = chunk_offsets(
            timing, len(sizes), sim.jitter_rng, stall_at, int((fault.arg if fault else 0) * 1e9)
        )
        for size, offset in zip(sizes, offsets, strict=True):
            due = arrival + offset
            while (left := due - time.monotonic_ns()) > EARLY_NS:
                await asyncio.sleep(left / 1e9)
            yield size

    async def stream(
        self,
        spec: GenSpec,
        context: aio.ServicerContext,
        arrival: int,
        ack: Callable[[], Any],
        message: Callable[[int, int, bool, bool, Plan], Any],
    ) -> AsyncIterator[Any]:
        """Drive one server stream for any gRPC API: the ack, then ``message(sent, count, first, last, plan)``.

        Why shared: TGIS and Caikit differ only in their message types; counters, faults, the
        write log and the timing must be the same code, or the two protocols would not be
        comparable on the sim.
        """
        sim = self.sim
        rid, fault = await self._begin(spec, context, arrival)
        plan = sim._plan(spec)
        engine = sim.engine is not None
        if not engine:
            sim.counters.running += 1
        sent = index = 0
        outcome = "client_gone"
        try:
            yield ack()
            mid_stream = fault is not None and fault.kind in ("disconnect_mid_stream", "malformed_sse")
            async for count in self._chunks(spec, plan.n_tokens, arrival, fault):
                last = sent + count >= plan.n_tokens
                yield message(sent, count, index == 0, last, plan)
                sent += count
                sim.log.chunk(rid, index, count, time.monotonic_ns())
                index += 1
                if mid_stream and fault is not None and not last and sent >= plan.n_tokens // 2:
                    outcome = fault.kind
                    sim.log.end(rid, index, sent, time.monotonic_ns(), outcome)
                    code = (
                        grpc.StatusCode.UNAVAILABLE
                        if outcome == "disconnect_mid_stream"
                        else grpc.StatusCode.DATA_LOSS
                    )
                    await context.abort(code, f"simulated fault {outcome}")
            outcome = fault.kind if fault is not None else plan.finish_reason
            sim.log.end(rid, index, sent, time.monotonic_ns(), outcome)
        finally:
            if outcome == "client_gone":
                sim.log.gone(rid, index, sent, time.monotonic_ns())
            if not engine:
                sim.counters.running -= 1
            sim._settle("ok" if outcome in ("length", "stop", "stall") else outcome, sent, plan.finish_reason)

    async def GenerateStream(self, request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        arrival = time.monotonic_ns()
        spec = tgis_spec(request.request.text, request.params, self.sim.opts.model)

        def message(sent: int, count: int, first: bool, last: bool, plan: Plan) -> Any:
            stop = pb.MAX_TOKENS if plan.finish_reason == "length" else pb.EOS_TOKEN
            msg = pb.GenerationResponse(
                generated_token_count=sent + count,
                text=TOKEN_TEXT * count,
                stop_reason=stop if last else pb.NOT_FINISHED,
                tokens=_token_infos(count, request.params),
            )
            if first:
                msg.input_token_count = spec.prompt_tokens
            return msg

        def ack() -> Any:
            return pb.GenerationResponse(input_token_count=spec.prompt_tokens)

        async for msg in self.stream(spec, context, arrival, ack, message):
            yield msg

    async def Generate(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        arrival = time.monotonic_ns()
        sim = self.sim
        out = []
        for item in request.requests:
            spec = tgis_spec(item.text, request.params, sim.opts.model)
            spec.stream = False
            rid, fault = await self._begin(spec, context, arrival)
            plan = sim._plan(spec)
            out.append((rid, spec, plan, fault))

        async def one(rid: str, spec: GenSpec, plan: Any, fault: Fault | None) -> Any:
            engine = sim.engine is not None
            if not engine:
                sim.counters.running += 1
            got = 0
            try:
                async for count in self._chunks(spec, plan.n_tokens, arrival, fault):
                    got += count
            finally:
                if not engine:
                    sim.counters.running -= 1
            sim.log.chunk(rid, 0, got, time.monotonic_ns())
            sim.log.end(rid, 1, got, time.monotonic_ns(), plan.finish_reason)
            sim._settle("ok", got, plan.finish_reason)
            return pb.GenerationResponse(
                input_token_count=spec.prompt_tokens,
                generated_token_count=got,
                text=TOKEN_TEXT * got,
                stop_reason=pb.MAX_TOKENS if plan.finish_reason == "length" else pb.EOS_TOKEN,
                tokens=_token_infos(got, request.params),
            )

        responses = await asyncio.gather(*(one(*args) for args in out))
        return pb.BatchedGenerationResponse(responses=responses)

    async def Tokenize(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        return pb.BatchedTokenizeResponse(
            responses=[
                pb.TokenizeResponse(
                    token_count=len(r.text.split()), tokens=r.text.split() if request.return_tokens else []
                )
                for r in request.requests
            ]
        )

    async def ModelInfo(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ModelInfoResponse(
            model_kind=pb.ModelInfoResponse.DECODER_ONLY,
            max_sequence_length=self.sim.opts.max_model_len,
            max_new_tokens=self.sim.opts.max_model_len,
        )
