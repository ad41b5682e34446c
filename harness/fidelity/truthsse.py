"""The truth server's response bytes: the sim's OpenAI completions SSE, rendered once per request shape.

Why a template per shape: every chunk of a request differs from the same
chunk of another request of the same shape (model, prompt and output
length, usage options) only in the response id. Rendering the chunks once
and splicing the id in (``oid.join(parts[i])``) leaves one small join per
write on the truth server's hot path. The bytes are the sim's
(``harness.sim.openai_api.OpenAIFormat`` plus ``httpconn``'s chunked framing),
which ``tests/test_fidelity_truth.py`` checks byte for byte, so the harness's
real parsing path is what the benchmark measures.
"""

from __future__ import annotations

TOKEN_TEXT = b" tok"
SSE_TYPE = b"text/event-stream; charset=utf-8"


def _usage(prompt: int, completion: int) -> bytes:
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt,
        prompt + completion,
        completion,
    )


class Shape:
    """Pre-rendered chunks of one request shape, as pieces to be joined by the response id.

    ``parts[i]`` is the list of byte pieces of chunk ``i``'s full bytes (HTTP
    chunk framing included) with the id left out, so a write is one
    ``oid.join(parts[i])``. The last chunk carries the final usage event,
    ``[DONE]`` and the chunked terminator in the same frame and write, as the
    sim's ``end_stream(data + tail)`` does.
    """

    __slots__ = ("parts",)

    def __init__(
        self, model: bytes, created: int, prompt: int, n: int, usage: bool, continuous: bool
    ) -> None:
        id_len = len("cmpl-") + 32
        head_a = b'data: {"id":"'
        head_b = b'","object":"text_completion","created":%d,"model":%s,"choices":[' % (created, model)
        parts: list[list[bytes]] = []
        for i in range(n):
            last = i == n - 1
            fin = b'"length"' if last else b"null"
            cont = b',"usage":' + _usage(prompt, i + 1) if usage and continuous else b""
            pieces = [
                head_a,
                head_b
                + b'{"index":0,"text":"'
                + TOKEN_TEXT
                + b'","logprobs":null,"finish_reason":'
                + fin
                + b',"stop_reason":null}]'
                + cont
                + b"}\n\n",
            ]
            if last:
                if usage:
                    pieces[-1] += head_a
                    pieces.append(head_b + b'],"usage":' + _usage(prompt, n) + b"}\n\n")
                pieces[-1] += b"data: [DONE]\n\n"
            size = sum(map(len, pieces)) + id_len * (len(pieces) - 1)
            pieces[0] = b"%x\r\n" % size + pieces[0]
            pieces[-1] += b"\r\n0\r\n\r\n" if last else b"\r\n"
            parts.append(pieces)
        self.parts = parts
