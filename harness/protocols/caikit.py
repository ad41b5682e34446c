"""The stream rules Caikit's two text-generation transports share (``caikit-grpc``, ``caikit-http``).

A Caikit stream (caikit-nlp's ``TextGenerationTGIS``, forwarding to TGIS) is a
series of ``GeneratedTextStreamResult`` messages, the same over gRPC
(protobuf) and HTTP (one JSON object per SSE ``event: message``):

* the first carries ``details.input_token_count`` and no tokens: an
  acknowledgement, not the first token;
* then ``details.generated_tokens`` counts up (cumulative) and
  ``generated_text`` is the new text. A chunk is a message that advances
  the count; its token count is the advance (so a message carrying two
  tokens is one chunk of two);
* the stream is over at a ``finish_reason`` other than ``NOT_FINISHED``;
  ``ERROR`` is an error the server reported. There is no ``[DONE]``.

Counts: output tokens are the last ``generated_tokens`` (``usage``; cut
streams ``usage_per_chunk``), prompt tokens the ack's ``input_token_count``.
The client's own count is the streamed text retokenized (n/a without a
tokenizer), never the server's counters.
"""

from __future__ import annotations

from harness.protocols.base import StreamResult

NOT_FINISHED = "NOT_FINISHED"
ERROR = "ERROR"


class CaikitStream:
    """Folds messages (text, cumulative count, input count, finish reason) into a ``StreamResult``."""

    __slots__ = ("res", "texts", "last")

    def __init__(self) -> None:
        self.res = StreamResult(per_chunk_usage=True)
        self.texts: list[str] = []
        self.last = 0

    def add(self, arrival_ns: int, text: str, generated: int, input_count: int, finish: str) -> None:
        res = self.res
        if input_count and res.prompt_tokens is None:
            res.prompt_tokens = input_count
        if generated > self.last:
            res.chunk_times_ns.append(arrival_ns)
            res.chunk_tokens.append(generated - self.last)
            self.last = generated
        if text:
            self.texts.append(text)
        if finish == ERROR:
            res.error = "server ended the stream with finish_reason ERROR"
        elif finish and finish != NOT_FINISHED:
            res.finished = True

    def result(self, any_message: bool) -> StreamResult:
        res = self.res
        if any_message:
            res.completion_tokens = self.last
            res.usage_source = "usage" if res.finished else "usage_per_chunk"
        res.text = "".join(self.texts)
        return res
