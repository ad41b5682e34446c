"""SSE framing with per-read arrival stamps, split lazily once the stream is over.

Why a module of its own: the framing is shared by every SSE protocol (OpenAI,
TGI, Caikit HTTP) and by gRPC records (an empty splitter), while reading the
socket (``httpstream``) and interpreting the events (the protocol specs in
``harness.protocols``) are separate concerns with separate costs.

A read that completes more than one data event is *coalesced*: every event in
it carries the same stamp, so its per-token gaps are not real. We count those
events so the report can say how much of the ITL data is in doubt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

DONE = b"[DONE]"
# Events that start like this are data events whose data is not ``[DONE]`` (it starts with "{").
OBJECT_PREFIXES = (b"data: {", b"data:{")
# Below this many events the per-event loop is cheaper than numpy's fixed cost per call.
VECTOR_MIN_EVENTS = 8
DONE_EVENT = b"data: " + DONE
JOIN_FROM, JOIN_TO = b"}\n\ndata: {", b"},{"

Event = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class SimpleBody:
    """A body in the common shape: every event is one ``data: {...}`` line except trailing ``data: [DONE]`` ones.

    ``array`` is ``b"[" + b",".join(payloads) + b"]"`` (each payload is the
    event without ``data: ``), ``stamps`` the object events' stamps, ``done``
    whether a ``[DONE]`` followed them. That is exactly what the general
    decode (``harness.protocols.jsonstream``) would select and join from the
    materialized events, built here in one pass over the body.
    """

    stamps: list[int]
    array: bytes
    done: bool


class SseEvents(Sequence[Event]):
    """``SseSplitter.events`` as a sequence, plus the splitter's ``SimpleBody`` (None if not that shape).

    Why: the OpenAI interpreter only needs the ``SimpleBody``; making 128
    ``(stamp, bytes)`` tuples (a slice per event) for it cost more than the
    rest of the split. Any other use (TGI, Caikit, tests) indexes or iterates
    this, which materializes the events once, as before.
    """

    __slots__ = ("_splitter",)

    def __init__(self, splitter: SseSplitter) -> None:
        self._splitter = splitter

    @property
    def simple(self) -> SimpleBody | None:
        return self._splitter.simple

    def __len__(self) -> int:
        return len(self._splitter.events)

    def __getitem__(self, index: Any) -> Any:
        return self._splitter.events[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._splitter.events)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SseEvents | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SseEvents({self._splitter.events!r})"


class SseSplitter:
    """SSE framing with per-read arrival stamps, split lazily once the stream is over.

    ``events`` holds ``(arrival_ns, raw_event_bytes)``, where the stamp is
    that of the read which completed the event. ``coalesced`` counts data
    events that arrived in the same read as an earlier data event.

    Why lazy: ``feed`` runs once per socket read on the hot path, where every
    microsecond delays the stamps of *other* streams' reads. So ``feed`` only
    appends the bytes and remembers (end offset, stamp); the blank-line search
    happens on the first access to ``events``/``coalesced``/``close``, after
    the response, with the same result as splitting read by read: an event
    gets the stamp of the first read whose bytes include its closing blank line.
    """

    __slots__ = (
        "_buf",
        "_ends",
        "_stamps",
        "_split_len",
        "_events",
        "_coalesced",
        "_rest",
        "_simple",
        "_lazy",
    )

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends: list[int] = []
        self._stamps: list[int] = []
        self._split_len = -1  # len(_buf) when _events was last computed
        self._events: list[tuple[int, bytes]] | None = []
        self._coalesced = 0
        self._rest = b""
        self._simple: SimpleBody | None = None
        self._lazy: tuple[bytes, list[int], np.ndarray] | None = None  # what _events is made of, if None

    def feed(self, data: bytes | bytearray, arrival_ns: int) -> None:
        buf = self._buf
        buf += data
        self._ends.append(len(buf))
        self._stamps.append(arrival_ns)

    def load(self, body: bytes, ends: np.ndarray, stamps: np.ndarray) -> None:
        """Take a whole body at once, with the end offset and stamp (int64 arrays) of each read that added to it.

        The same state as ``feed`` called per read (for the native reader,
        which has split the reads already): nothing may have been fed before.
        The arrays stay arrays (``split_simple`` indexes them as such); the
        other splits get Python lists.
        """
        if self._buf:
            raise ValueError("SseSplitter.load: bytes were fed already")
        self._buf = bytearray(body)
        self._ends = ends  # type: ignore[assignment]
        self._stamps = stamps  # type: ignore[assignment]

    @property
    def reads(self) -> int:
        return len(self._stamps)

    @property
    def size(self) -> int:
        """Body bytes fed so far."""
        return len(self._buf)

    def head(self, limit: int) -> bytes:
        """The first ``limit`` body bytes (an error response's text)."""
        return bytes(self._buf[:limit])

    @property
    def events(self) -> list[tuple[int, bytes]]:
        self._split()
        if self._events is None:
            assert self._lazy is not None
            self._events = _materialize(*self._lazy)
            self._lazy = None
        return self._events

    @property
    def simple(self) -> SimpleBody | None:
        """The body as a ``SimpleBody`` when it has that shape (LF line ends), else None."""
        self._split()
        return self._simple

    def stream(self) -> SseEvents:
        """The events for an interpreter: a sequence that also offers ``simple``."""
        return SseEvents(self)

    @property
    def coalesced(self) -> int:
        self._split()
        return self._coalesced

    def close(self) -> bytes:
        """End of stream: returns any bytes of an unterminated event (non-empty means cut mid-event)."""
        self._split()
        rest, self._rest = self._rest.strip(), b""
        return rest

    def _read_lists(self) -> tuple[list[int], list[int]]:
        """Per-read ends and stamps as Python ints (``load`` keeps arrays) for the per-event splits."""
        ends, stamps = self._ends, self._stamps
        if isinstance(ends, np.ndarray):
            return ends.tolist(), stamps.tolist()  # type: ignore[attr-defined]
        return ends, stamps

    def _split(self) -> None:
        if self._split_len == len(self._buf):
            return
        self._split_len = len(self._buf)
        self._simple = self._lazy = None
        if b"\r" in self._buf:
            self._events, self._coalesced, self._rest = _split_by_read(self._buf, *self._read_lists())
            return
        body = bytes(self._buf)
        found = split_simple(body, self._ends, self._stamps)
        if found is None:
            self._events, self._coalesced, self._rest = split_lf_vectorised(body, *self._read_lists())
        else:
            self._simple, self._coalesced, self._rest, event_stamps, closes = found
            self._events, self._lazy = None, (body, event_stamps, closes)


def split_simple(
    body: bytes, ends: list[int], stamps: list[int], min_events: int = VECTOR_MIN_EVENTS
) -> tuple[SimpleBody, int, bytes, list[int], np.ndarray] | None:
    """A ``SimpleBody`` body's split without making its events: (simple, coalesced, rest, stamps, closes).

    None unless every LF is one of a ``\n\n`` pair (so every event is one
    line and the rest has none) and the events are ``data: {...}`` lines, then
    only ``data: [DONE]``; ``split_lf_vectorised`` then does the split.

    Why exact: with every LF in an adjacent pair, ``split_lf``'s left-to-right
    search for ``\n\n`` finds exactly those pairs (it resumes after each),
    so event ``i`` closes at ``pair_i + 2``. The trailing ``[DONE]`` events are
    compared directly. Before them, replacing ``}\n\ndata: {`` by ``},{``
    exactly ``m - 1`` times (the length says how many), each occurrence
    holding one of the ``m - 1`` LF pairs there, hits every separator: so
    every event but the first starts ``data: {`` and every one but the last
    ends ``}`` (the first and last are checked directly), none is blank, all
    are data events (``_is_data_event``) and the result is ``b",".join`` of
    the payloads. Stamps and the coalesced count are as in ``split_lf_vectorised``.
    """
    if not body.startswith(b"data: {"):
        return None
    lf = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 10)
    if len(lf) % 2 or len(lf) < max(2, 2 * min_events) or not np.array_equal(lf[1::2], lf[0::2] + 1):
        return None
    closes = lf[1::2] + 1
    cl = closes.tolist()
    n = m = len(cl)
    while m > 1 and body[cl[m - 2] : cl[m - 1] - 2] == DONE_EVENT:
        m -= 1
    end = cl[m - 1] - 2
    if body[end - 1 : end] != b"}":
        return None
    joined = body[6:end].replace(JOIN_FROM, JOIN_TO)
    if len(joined) != end - 6 - (m - 1) * (len(JOIN_FROM) - len(JOIN_TO)):
        return None
    reads = np.searchsorted(np.asarray(ends, dtype=np.int64), closes, side="left")
    event_stamps = np.asarray(stamps, dtype=np.int64)[reads].tolist()
    coalesced = m - 1 - int(np.count_nonzero(np.diff(reads[:m])))
    simple = SimpleBody(event_stamps[:m], b"[" + joined + b"]", m < n)
    return simple, coalesced, body[cl[-1] :], event_stamps, closes


def _materialize(body: bytes, event_stamps: list[int], closes: np.ndarray) -> list[Event]:
    """The ``(stamp, raw)`` events of a ``split_simple`` body (a slice per event, so only when asked)."""
    starts = [0, *closes[:-1].tolist()]
    raws = map(body.__getitem__, map(slice, starts, (closes - 2).tolist()))
    return list(zip(event_stamps, raws, strict=True))


def split_lf_vectorised(
    buf: bytes | bytearray, ends: list[int], stamps: list[int], min_events: int = VECTOR_MIN_EVENTS
) -> tuple[list[tuple[int, bytes]], int, bytes]:
    """``split_lf``'s result without Python work per event in the common case (LF line ends).

    Why: a stream is ~one event per token, and the per-event loop of
    ``split_lf`` (find, slice, compare, classify) was a tenth of the Locust
    process's CPU at 1,024 streams. Here each step is one C-level call over
    all events, and Python only looks at events that do not start like a JSON
    object data event (``[DONE]``, comments, blank or other events: a few).

    Why it is exact: ``bytes.split(b"\n\n")`` cuts at the same places as
    ``split_lf``'s left-to-right ``find`` (both take the leftmost separator,
    non-overlapping), so the parts are the same events and the last part is
    the unterminated rest. Event ``i`` closes at ``sum(len(part) + 2 for the
    first i + 1 parts)``; the read that completed it is the first whose end
    offset is ``>=`` that (``searchsorted(..., side="left")``, which is what
    ``split_lf``'s ``while ends[r] < close`` walk finds, ``ends`` being
    non-decreasing). Blank events are dropped; none starts with
    ``OBJECT_PREFIXES``. The coalesced count is "data events completed by
    each read, minus one for each read that completed any", which is
    ``split_lf``'s ``sum(max(count - 1, 0))`` over reads.
    """
    parts = bytes(buf).split(b"\n\n")
    rest = parts.pop()
    n = len(parts)
    if n < min_events:
        return split_lf(buf, ends, stamps)
    closes = np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=n) + 2)
    reads = np.searchsorted(np.asarray(ends, dtype=np.int64), closes, side="left")
    events = list(zip(np.asarray(stamps, dtype=np.int64)[reads].tolist(), parts, strict=True))
    is_data = np.fromiter(map(bytes.startswith, parts, repeat(OBJECT_PREFIXES)), dtype=bool, count=n)
    blank: list[int] = []
    for i in np.flatnonzero(~is_data).tolist():  # the few events that are not JSON-object data
        raw = parts[i]
        if not raw.strip():
            blank.append(i)
        elif _is_data_event(raw):
            is_data[i] = True
    data_reads = reads[is_data]
    coalesced = 0
    if len(data_reads):
        coalesced = len(data_reads) - 1 - int(np.count_nonzero(np.diff(data_reads)))
    if blank:
        for i in reversed(blank):
            del events[i]
    return events, coalesced, rest


def split_lf(
    buf: bytearray, ends: list[int], stamps: list[int]
) -> tuple[list[tuple[int, bytes]], int, bytes]:
    """One pass over the whole body (LF line ends): events, coalesced count, unterminated rest.

    The reference for ``split_lf_vectorised`` (which uses it for short bodies).
    """
    events: list[tuple[int, bytes]] = []
    coalesced = 0
    read_data = 0  # data events completed by read r
    r = 0
    pos = 0
    find = buf.find
    while (idx := find(b"\n\n", pos)) >= 0:
        close = idx + 2
        while ends[r] < close:  # the event was completed by a later read
            if read_data > 1:
                coalesced += read_data - 1
            read_data = 0
            r += 1
        raw = bytes(buf[pos:idx])
        pos = close
        if not raw.strip():
            continue
        events.append((stamps[r], raw))
        if _is_data_event(raw):
            read_data += 1
    if read_data > 1:
        coalesced += read_data - 1
    return events, coalesced, bytes(buf[pos:])


def _split_by_read(
    body: bytearray, ends: list[int], stamps: list[int]
) -> tuple[list[tuple[int, bytes]], int, bytes]:
    """CRLF line ends (allowed by SSE, rare): replay read by read, normalising as the bytes come."""
    events: list[tuple[int, bytes]] = []
    coalesced = 0
    buf = bytearray()
    start = 0
    for end, stamp in zip(ends, stamps, strict=True):
        buf += body[start:end]
        start = end
        if b"\r" in buf:
            buf = bytearray(buf.replace(b"\r\n", b"\n"))
        data_events = 0
        while (idx := buf.find(b"\n\n")) >= 0:
            raw = bytes(buf[:idx])
            del buf[: idx + 2]
            if not raw.strip():
                continue
            events.append((stamp, raw))
            if _is_data_event(raw):
                data_events += 1
        if data_events > 1:
            coalesced += data_events - 1
    return events, coalesced, bytes(buf)


def _is_data_event(raw: bytes) -> bool:
    """A data event other than ``[DONE]``: the ones whose stamps are timing data."""
    if raw.startswith(b"data:"):
        if raw.startswith(b"data: {"):
            return True  # the common case, decided without splitting lines
    elif b"\ndata:" not in raw:
        return False
    return event_data(raw) != DONE


def event_data(raw: bytes) -> bytes | None:
    """The ``data`` field of one SSE event (multi-line data joined by ``\\n``), or None."""
    parts: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None
