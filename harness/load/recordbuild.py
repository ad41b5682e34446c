"""From one finished stream to a ``RequestRecord``: the fields the harness measures and the token counts.

Why apart from the collector: the collector counts records and gathers them per
step; this is what a record *says*. ``build_record`` runs in the finisher's job
for each response (``StreamingUser.record``), and reads the raw ``Outcome`` (times, status,
error) together with the protocol's interpretation of the stream
(``StreamResult``: chunk times, tokens, usage); ``finalize_records`` fills the
tokenizer counts once, after the stream work, off the hot path
(``tokencount`` does the same per spool part). Both decide where a token
count comes from (``token_source``), which is what the agreement check between
client and server counts depends on.
"""

from __future__ import annotations

from typing import Any

from harness.load.httpstream import ERROR_BODY_CHARS, Outcome
from harness.load.plan import LoadPlan
from harness.load.prompts import PromptSpec
from harness.protocols.base import StreamResult
from harness.protocols.registry import get_protocol
from harness.records import RequestRecord, record_to_dict


def build_record(
    plan: LoadPlan,
    *,
    request_id: int,
    worker: int,
    scheduled_ns: int,
    warmup: bool,
    spec: PromptSpec,
    outcome: Outcome,
    result: StreamResult | None,
) -> RequestRecord:
    """One record from the raw outcome and the interpreted stream (see records.py for field meanings)."""
    rec = RequestRecord(
        run_id=plan.run_id,
        cell_id=plan.cell_id,
        step_id=plan.step_id,
        request_id=request_id,
        worker=worker,
        api=plan.api,
        scheduled_ns=scheduled_ns,
        sent_ns=outcome.sent_ns,
        end_ns=outcome.end_ns,
        requested_prompt_tokens=spec.prompt_tokens,
        requested_output_tokens=spec.output_tokens,
        status=outcome.status,
        error_class=outcome.error_class,
        error_message=outcome.error_message,
        warmup=warmup,
        coalesced_chunks=outcome.splitter.coalesced,
        simulated=plan.simulated,
        retry_after=outcome.retry_after,
    )
    if result is None:
        return rec
    rec.chunk_times_ns = result.chunk_times_ns
    rec.chunk_tokens = result.chunk_tokens
    rec.first_token_ns = result.chunk_times_ns[0] if result.chunk_times_ns else None
    # The client's own count: from the stream's pieces, never from usage (finalize_records
    # retokenizes the text where a tokenizer is known); None is "n/a", not agreement.
    rec.client_output_tokens = result.client_tokens
    rec.prompt_tokens = result.prompt_tokens
    if result.prompt_tokens is None and spec.exact and get_protocol(plan.api).prompt_style == "text":
        rec.prompt_tokens = spec.prompt_tokens
    if result.usage_source != "none":
        rec.output_tokens = result.completion_tokens
        rec.token_source = result.usage_source
    elif not plan.tokenizer_path:
        rec.output_tokens = len(result.chunk_tokens)
        rec.token_source = "chunks"
    # else: finalize_records fills output_tokens from the tokenizer after the step.
    if rec.error_class is None:
        if result.error is not None:
            rec.error_class, rec.error_message = "bad_payload", result.error[:ERROR_BODY_CHARS]
        elif not result.complete:
            rec.error_class = "stream_broken"
            rec.error_message = f"stream ended after {len(result.chunk_times_ns)} chunks without the protocol's end-of-stream event"
    return rec


def finalize_records(
    records: list[RequestRecord], texts: list[str], tokenizer_path: str | None
) -> list[dict[str, Any]]:
    """Fill tokenizer-based counts (off the hot path: once, after the stream work) and make plain dicts.

    With a tokenizer, ``client_output_tokens`` is the tokenizer count of the
    streamed text (an independent check of the server's usage), and records
    without server usage take it as ``output_tokens`` (``token_source="tokenizer"``).
    Without one it stays what the protocol's stream itself counts (TGI: one
    token per event), else None: never the server's usage, which would make
    the agreement check circular.
    """
    if tokenizer_path and records:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_path)
        idx = [i for i, r in enumerate(records) if r.ok or texts[i]]
        encoded = tok.encode_batch([texts[i] for i in idx], add_special_tokens=False)
        for i, enc in zip(idx, encoded, strict=True):
            rec = records[i]
            rec.client_output_tokens = len(enc.ids)
            if rec.output_tokens is None:
                rec.output_tokens = len(enc.ids)
                rec.token_source = "tokenizer"
    return [record_to_dict(r) for r in records]
