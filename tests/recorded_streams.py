"""Load the streams recorded from real servers (``tests/data/streams``, see its README).

Why a loader: every protocol test that replays a real server's bytes needs the same three
things (the raw body reads, the raw gRPC messages, the final status), and the file format
should be read in one place.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STREAMS_DIR = Path(__file__).resolve().parent / "data" / "streams"


@dataclass(frozen=True)
class HttpRecording:
    name: str
    server: str
    request: dict[str, Any]
    status: int
    headers: dict[str, str]
    chunks: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class GrpcRecording:
    name: str
    server: str
    method: str
    metadata: list[tuple[str, str]]
    request: bytes
    messages: list[bytes]
    decoded: list[dict[str, Any]]
    code: str
    details: str


def names(kind: str | None = None) -> list[str]:
    """Recording names (file stems), optionally only ``"http"`` or ``"grpc"`` ones."""
    out = []
    for path in sorted(STREAMS_DIR.glob("*.json")):
        fmt = json.loads(path.read_text(encoding="utf-8"))["format"]
        if kind is None or fmt.startswith(f"tokenbench-recorded-{kind}/"):
            out.append(path.stem)
    return out


def _raw(name: str) -> dict[str, Any]:
    return json.loads((STREAMS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_http(name: str) -> HttpRecording:
    d = _raw(name)
    if d["format"] != "tokenbench-recorded-http/1":
        raise ValueError(f"{name}: not an HTTP recording ({d['format']})")
    resp = d["response"]
    return HttpRecording(
        name=name,
        server=d["server"],
        request=d["request"],
        status=resp["status"],
        headers=resp["headers"],
        chunks=[base64.b64decode(c["b64"]) for c in resp["chunks"]],
    )


def load_grpc(name: str) -> GrpcRecording:
    d = _raw(name)
    if d["format"] != "tokenbench-recorded-grpc/1":
        raise ValueError(f"{name}: not a gRPC recording ({d['format']})")
    req, resp = d["request"], d["response"]
    return GrpcRecording(
        name=name,
        server=d["server"],
        method=req["method"],
        metadata=[(k, v) for k, v in req["metadata"]],
        request=base64.b64decode(req["b64"]),
        messages=[base64.b64decode(m["b64"]) for m in resp["messages"]],
        decoded=[m["decoded"] for m in resp["messages"]],
        code=resp["status"]["code"],
        details=resp["status"]["details"],
    )
