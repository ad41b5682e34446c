"""The bytes of a request head, and what a response head says about retrying.

Why apart from ``httpstream``: a user renders its request head once
(``request_prefix``) and adds only the id and length per request
(``finish_head``); the prewarm's probe has its own head (``probe_head``).
None of this touches a socket, so ``httpstream`` keeps to sending and reading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from geventhttpclient.response import HTTPResponse

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def request_prefix(base_url: str, path: str, headers: Mapping[str, str]) -> bytes:
    """Request line, ``Host`` and the fixed headers of a POST to ``base_url`` + ``path``.

    Raises ``ValueError`` for a header that could break the request framing
    (naming the header, not the value).
    """
    url = urlsplit(base_url)
    prefix = url.path.rstrip("/")
    # Never the URL's userinfo: ``Host: user:pass@h`` would send a credential in the clear and
    # break virtual hosting (the backend moves userinfo into an Authorization header).
    lines = [f"POST {prefix}{path} HTTP/1.1", f"Host: {url.netloc.rpartition('@')[2]}"]
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"request header name {name!r} is not a valid HTTP token")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"request header {name!r}: value contains a line break or NUL")
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("request headers must be latin-1 text (HTTP/1.1 header encoding)") from None


def finish_head(prefix: bytes, request_id: str, body_len: int) -> bytes:
    """The complete request head: the prefix plus this request's id and length."""
    return prefix + b"X-Request-Id: %s\r\nContent-Length: %d\r\n\r\n" % (request_id.encode(), body_len)


def probe_head(base_url: str, path: str, headers: Mapping[str, str]) -> bytes:
    """A ``GET`` of ``path`` with the user's headers (auth), for ``StreamClient.probe``."""
    prefix = request_prefix(base_url, path, headers).replace(b"POST ", b"GET ", 1)
    return prefix + b"X-Request-Id: tokenbench-prewarm\r\n\r\n"


RETRY_STATUSES = (429, 503)


def retry_after(parser: HTTPResponse, status: int) -> str | None:
    """The ``Retry-After`` value of a 429/503 (raw: seconds or an HTTP date), else None.

    Recorded, never honoured: a benchmark that waited and retried would hide
    the overload it is there to measure (docs/metrics.md).
    """
    if status not in RETRY_STATUSES:
        return None
    value = parser.get("retry-after")
    return str(value)[:64] if value is not None else None
