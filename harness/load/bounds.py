"""How much one response may hold before the load client cuts it (``stream_too_large``).

Why: an endless fast stream grew the harness to 8 GB RSS in under 5 s, since
every read is kept (bytes plus stamp) until the stream ends. A bound on bytes
and on reads (chunks) per response keeps memory flat; past it the request is
classified, its connection closed, and the step goes on. The check is a
counter compare per read in the transports (``httpstream``, ``grpcstream``).

No gevent, grpc or Locust here: the plan (read by the orchestrator) uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_RESPONSE_BYTES = 16 * 2**20
MAX_RESPONSE_CHUNKS = 65_536


@dataclass(frozen=True, slots=True)
class Bounds:
    """The most one response may hold: body bytes as read (framing included) and reads or messages."""

    max_bytes: int = MAX_RESPONSE_BYTES
    max_reads: int = MAX_RESPONSE_CHUNKS

    def message(self, nbytes: int, reads: int) -> str:
        return (
            f"response cut after {nbytes} bytes in {reads} reads: past the bound of "
            f"{self.max_bytes} bytes / {self.max_reads} chunks (workload.max_response_bytes/_chunks)"
        )


class ResponseTooLarge(Exception):
    """The response passed the byte or read bound: cut, so one endless stream cannot eat the memory."""
