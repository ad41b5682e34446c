"""Engine mode's HTTP side: write each token the engine samples to its client.

Why a sink object and not a ``StreamJob``: in exact mode the due times are
known up front; in engine mode they are whenever the modelled iteration that
samples the token ends, so the engine pushes tokens here and the sink renders
them with the request's ``StreamFormat`` (OpenAI or TGI bytes, unchanged).

Mid-stream faults (``malformed_sse``, ``disconnect_mid_stream``) fire at the
middle token, as in exact mode; a client that goes away aborts its sequence
in the engine so its KV blocks are freed, as vLLM does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.sim.engine import EngineLoop
from harness.sim.generation import StreamFormat
from harness.sim.httpconn import Connection
from harness.sim.scheduler import Seq
from harness.sim.writelog import WriteLog


class HttpSink:
    """One HTTP request's view of its sequence."""

    __slots__ = (
        "conn",
        "fmt",
        "stream",
        "n_tokens",
        "rid",
        "log",
        "fault",
        "on_end",
        "engine",
        "seq",
        "sent",
        "mid",
        "ended",
        "ok_note",
    )

    def __init__(
        self,
        conn: Connection,
        fmt: StreamFormat,
        stream: bool,
        n_tokens: int,
        rid: str,
        log: WriteLog,
        fault: str | None,
        on_end: Callable[[str, int], None],
        engine: EngineLoop,
        ok_note: str,
    ) -> None:
        self.conn = conn
        self.fmt = fmt
        self.stream = stream
        self.n_tokens = n_tokens
        self.rid = rid
        self.log = log
        self.fault = fault
        self.on_end = on_end
        self.engine = engine
        self.seq: Seq | None = None
        self.sent = 0
        self.mid = n_tokens // 2
        self.ended = False
        self.ok_note = ok_note

    def start(self, prompt_tokens: int) -> None:
        if self.stream:
            self.conn.start_stream(self.fmt.content_type)
        self.conn.on_lost.append(self.gone)
        self.seq = self.engine.submit(prompt_tokens, self.n_tokens, self)

    def gone(self) -> None:
        """The client went away: free the sequence's blocks and record how far it got."""
        if self.ended:
            return
        self.ended = True
        if self.seq is not None:
            self.engine.abort(self.seq)
        self.log.gone(self.rid, self.sent, self.sent, time.monotonic_ns())
        self.on_end("client_gone", self.sent)

    def tokens(self, generated: int, finished: bool, t_ns: int) -> None:
        if self.ended:
            return
        conn = self.conn
        if not self.stream:
            if finished:
                kind = self.fault
                if kind == "malformed_sse":
                    conn.respond(200, b'{"id": <<not json')
                elif kind == "disconnect_mid_stream":
                    conn.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
                    )
                    conn.keep_alive = False
                    conn.close()
                else:
                    conn.respond(200, self.fmt.body())
                    self.log.chunk(self.rid, 0, generated, time.monotonic_ns())
                self.sent = generated
                self._finish(kind or self.ok_note, 1)
            return
        index = generated - 1
        if index == self.mid and self.fault == "malformed_sse":
            conn.stream_chunk(self.fmt.malformed())
        data = self.fmt.chunk(index, 1, index == 0, finished)
        if finished:
            conn.end_stream(data + self.fmt.tail())
        else:
            conn.stream_chunk(data)
        self.log.chunk(self.rid, index, 1, time.monotonic_ns())
        self.sent = generated
        if finished:
            self._finish(self.fault or self.ok_note, generated)
        elif index == self.mid and self.fault == "disconnect_mid_stream":
            if self.seq is not None:
                self.engine.abort(self.seq)
            self._finish("disconnect_mid_stream", generated)
            conn.keep_alive = False
            conn.close()

    def _finish(self, note: str, chunks: int) -> None:
        self.ended = True
        try:
            self.conn.on_lost.remove(self.gone)
        except ValueError:
            pass
        self.log.end(self.rid, chunks, self.sent, time.monotonic_ns(), note)
        self.on_end(note, self.sent)
