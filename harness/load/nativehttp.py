"""The HTTP side of the native reader: a response the thread read, made into the parser's and splitter's state.

Why apart from ``httpstream``: the thread (``nativeread``) decides only when
to stop reading; what the response *means* stays the HTTP parser's. Here the
common case (the thread saw a complete response) gives the parser only the
heads and the end of the framing and hands the splitter the de-chunked body
with its per-read stamps in one call; anything else is replayed read by read
through the same per-read steps as ``httpstream._read_plain``, which then
reads on if the parser wants more.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from geventhttpclient.response import HTTPParseError, HTTPResponse

from harness.load.bounds import Bounds, ResponseTooLarge
from harness.load.nativeread import COMPLETE, EOF, ERROR, TOO_LARGE, NativeReader, Reads
from harness.load.sseframe import SseSplitter


def is_final(parser: HTTPResponse) -> bool:
    """A complete *final* response: an interim 1xx is followed by another on the same socket."""
    return int(parser.get_code()) >= 200


def _replay(reads: Reads, parser: HTTPResponse, feed_splitter: Callable[[bytearray, int], None]) -> bool:
    """Feed the reader thread's reads, in order, to the parser and splitter; True once the response is over.

    The same per-read steps as ``_read_plain`` after its ``recv``, with the
    thread's stamps, so a response means what it means on the Python path.
    """
    buf: bytearray = parser._body_buffer
    feed = parser.feed
    raw = reads.raw
    start = 0
    for end, stamp in zip(reads.ends.tolist(), reads.stamps.tolist(), strict=True):
        feed(raw(start, end))  # the C parser takes bytes only (no memoryview)
        start = end
        if buf:
            feed_splitter(buf, stamp)
            buf.clear()
        if parser.message_complete and is_final(parser):
            return True
    return False


def _framing_agrees(reads: Reads, parser: HTTPResponse) -> bool:
    """Feed the parser the heads and the end of the body only; True if it then agrees the response is over.

    The common case (the thread saw a complete response) without a parser
    call per read: the parser sees every head (1xx included) and the framing's
    end (the last-chunk line and trailers; a Content-Length body whole), so
    status, headers and keep-alive are its own, while the body and its
    per-read stamps come from the thread's copy. Anything it does not agree
    with goes the long way (``_replay`` on a fresh parser).
    """
    if not reads.head_len:
        return False
    try:
        parser.feed(reads.raw(0, reads.head_len))
        if parser.headers_complete and not parser.message_complete:
            start = reads.term_start if reads.chunked else reads.head_len
            parser.feed(reads.raw(start, reads.consumed))
    except HTTPParseError:
        return False
    parser._body_buffer.clear()  # the parser's copy of a Content-Length body: the thread's is used
    return bool(parser.message_complete and is_final(parser))


@dataclass(frozen=True)
class Chain:
    """A closed-loop user's next request, for the reader thread to send the moment the response before it ends.

    ``deadline_ns`` (``time.monotonic_ns``) is the step's end of issuing: a
    request the thread would send later is not sent (the user then asks the
    step itself, as without a chain). See ``nativeread.c`` for why.
    """

    request: bytes
    deadline_ns: int


def read_native(
    reader: NativeReader,
    raw: socket.socket,
    parser: HTTPResponse,
    splitter: SseSplitter,
    bounds: Bounds,
    read_on: Callable[[Bounds], None],
    chains: Sequence[Chain] = (),
    attach: bool = False,
) -> int | None:
    """The response read and stamped by the process's reader thread (``nativeread``), then replayed.

    Returns the stamp of the response's last read when the thread saw it
    whole (the response's end, however late this greenlet woke), else None.
    ``attach``: the request was sent by the thread (a chain), so its response
    is being read already; ``chains`` are armed after those already queued.

    Where the thread stopped but the parser does not agree the response is
    over (a framing the thread judged differently), the rest is read here,
    on the Python path (``read_on``), with what is left of the bounds: the thread decides
    only when to stop reading. A deadline stops the thread's reading of this
    socket and keeps what it had read (so a timed-out stream's partial data is
    interpreted as before).
    """
    feed_splitter = splitter.feed
    fd = raw.fileno()
    armed = [(chain.request, chain.deadline_ns) for chain in chains]
    try:
        if attach:
            reads = reader.attach(fd, armed)
        else:
            reads = reader.read(fd, bounds.max_bytes, bounds.max_reads, armed)
    except BaseException as err:
        partial = getattr(err, "partial", None)
        if partial is not None:
            try:
                _replay(partial, parser, feed_splitter)
            except HTTPParseError:
                pass  # the deadline is the error to report
        raise
    if reads.result == TOO_LARGE:
        if reads.head_len:  # the status, as the Python path knows it by then (the body is dropped)
            try:
                parser.feed(reads.raw(0, reads.head_len))
            except HTTPParseError:
                pass
        raise ResponseTooLarge(bounds.message(reads.size, len(reads.ends)))
    if reads.result == COMPLETE and _framing_agrees(reads, HTTPResponse("POST")):
        _framing_agrees(reads, parser)
        splitter.load(reads.body, reads.body_ends, reads.body_stamps)
        reader.whole += 1
        return int(reads.stamps[-1])
    reader.replayed += 1
    if _replay(reads, parser, feed_splitter):
        return None
    if reads.result == ERROR:
        raise OSError(reads.errno, os.strerror(reads.errno))
    if reads.result == EOF:  # the server closed the connection: as on the Python path, the caller judges
        return None
    # The thread saw the end (or a framing error) where the parser sees none: the parser decides, read on.
    read_on(Bounds(max_bytes=bounds.max_bytes - reads.size, max_reads=bounds.max_reads - len(reads.ends)))
    return None
