"""The sim's write log: what the server really did, for checking the client.

Format (CSV, one header line): ``event,request_id,index,tokens,t_ns,note``.

* ``A`` arrival: ``t_ns`` is ``time.monotonic_ns()`` taken first thing in the
  socket read that completed the request (before any parsing; see
  ``httpconn``); ``tokens`` is the prompt token count; ``note`` the API.
* ``C`` chunk: ``index`` is the chunk number, ``tokens`` the tokens it carried,
  ``t_ns`` the time right after it was handed to the socket.
* ``E`` end: ``index`` is the chunk count, ``tokens`` the total, ``note`` the
  finish reason or fault.
* ``X`` the client went away before the end.

Why CSV and buffered: lines are built on the event loop (a format string is
cheap) but written in batches every ``flush_s`` and at shutdown, so file I/O
never lands between a chunk's due time and its write. ``request_id`` is the
client's ``X-Request-Id`` header when given (commas and newlines stripped), so
the truth joins to client records.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

HEADER = "event,request_id,index,tokens,t_ns,note\n"


class WriteLog:
    """Append-only buffer of log lines, flushed in batches."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lines: list[str] = []
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")
            self._file.write(HEADER)
            self._file.flush()

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def arrival(self, request_id: str, t_ns: int, prompt_tokens: int, api: str) -> None:
        if self._file is not None:
            self._lines.append(f"A,{request_id},-1,{prompt_tokens},{t_ns},{api}\n")

    def chunk(self, request_id: str, index: int, tokens: int, t_ns: int) -> None:
        if self._file is not None:
            self._lines.append(f"C,{request_id},{index},{tokens},{t_ns},\n")

    def end(self, request_id: str, chunks: int, tokens: int, t_ns: int, note: str) -> None:
        if self._file is not None:
            self._lines.append(f"E,{request_id},{chunks},{tokens},{t_ns},{note}\n")

    def gone(self, request_id: str, chunks: int, tokens: int, t_ns: int) -> None:
        if self._file is not None:
            self._lines.append(f"X,{request_id},{chunks},{tokens},{t_ns},client_gone\n")

    def flush(self) -> None:
        if self._file is not None and self._lines:
            lines, self._lines = self._lines, []
            self._file.write("".join(lines))
            self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def clean_request_id(raw: str) -> str:
    """Make a client-supplied id safe for one CSV field."""
    return raw.replace(",", "_").replace("\n", "_").replace("\r", "_")[:200]


@dataclass(slots=True)
class RequestTruth:
    """One request as the server saw and wrote it."""

    request_id: str
    arrival_ns: int | None = None
    prompt_tokens: int | None = None
    api: str = ""
    chunk_times_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    end_ns: int | None = None
    outcome: str = ""

    @property
    def first_token_ns(self) -> int | None:
        return self.chunk_times_ns[0] if self.chunk_times_ns else None

    @property
    def output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ttft_ns(self) -> int | None:
        if self.arrival_ns is None or not self.chunk_times_ns:
            return None
        return self.chunk_times_ns[0] - self.arrival_ns

    @property
    def itls_ns(self) -> list[int]:
        """Per-gap inter-chunk latencies (chunk gaps, not divided by tokens)."""
        t = self.chunk_times_ns
        return [b - a for a, b in zip(t, t[1:], strict=False)]


def read_write_log(path: Path) -> dict[str, RequestTruth]:
    """Parse a write log into per-request truth, keyed by request id, in arrival order."""
    out: dict[str, RequestTruth] = {}
    with Path(path).open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or ",".join(header) + "\n" != HEADER:
            raise ValueError(f"{path}: not a sim write log (header {header!r})")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 6:
                raise ValueError(f"{path}:{lineno}: expected 6 fields, got {len(row)}: {row!r}")
            event, rid, index, tokens, t_ns, note = row
            truth = out.get(rid)
            if truth is None:
                truth = out[rid] = RequestTruth(request_id=rid)
            if event == "A":
                truth.arrival_ns, truth.prompt_tokens, truth.api = int(t_ns), int(tokens), note
            elif event == "C":
                truth.chunk_times_ns.append(int(t_ns))
                truth.chunk_tokens.append(int(tokens))
            elif event in ("E", "X"):
                truth.end_ns, truth.outcome = int(t_ns), note
            else:
                raise ValueError(f"{path}:{lineno}: unknown event {event!r}")
    return out
