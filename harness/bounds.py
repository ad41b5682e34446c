"""Sane bounds on scenario values, and the rules that judge several fields together.

Why bounds at all: a value pydantic happily accepts can still break a run
after its server started, which is exactly what ``validate`` exists to
prevent. ``inf`` seconds overflows ``time.sleep``; a rate of ``1e-300`` makes
the arrival gaps infinite and the step waits forever; ``1e300`` makes them
zero and the dispatcher never reaches its horizon; a 300-character name
becomes a folder name longer than the file system allows; ``ftp://`` waits
out the whole readiness timeout. Each bound here is far beyond any real
benchmark and turns such a value into a message at ``validate``.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

MAX_SECONDS = 7 * 24 * 3600.0  # durations, warm-ups and timeouts: one week
MIN_RATE = 0.001  # requests per second: one every ~17 minutes
MAX_RATE = 100_000.0  # requests per second; far beyond what one Locust client offers
MAX_TOKENS = 10_000_000  # token lengths: longer than any model's context
MAX_SEED = 2**32 - 1
MAX_NAME = 100  # scenario and server names (they start folder names)
MAX_CELL_ID = 200  # a cell id is a folder name (file systems allow 255 bytes)
MAX_CELLS = 10_000  # servers × sweep values × repeats
MAX_PROCESSES = 256  # Locust --processes
URL_SCHEMES = ("http", "https")


class FieldProblem(ValueError):
    """A rule broken by one field, found by a validator of the model that holds it.

    ``path`` is relative to that model (``steps.rate[0]``) and ``value`` is
    the offending value, so the error names the field and the value even when
    the rule needs several fields to judge.
    """

    def __init__(self, path: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.value = value


def check_http_url(url: str) -> str | None:
    """Why ``url`` is not an ``http(s)://host[:port]`` base URL, or ``None`` when it is."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        return f"not a valid URL ({err})"
    if parts.scheme.lower() not in URL_SCHEMES:
        scheme = f"'{parts.scheme}://'" if parts.scheme else "no scheme"
        return f"must start with http:// or https:// ({scheme} given)"
    if not parts.hostname:
        return "has no host (expected http://HOST:PORT/...)"
    return None


def check_host_port(target: str) -> str | None:
    """Why ``target`` is not a gRPC ``host:port``, or ``None`` when it is."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected HOST:PORT with a port from 1 to 65535"
    return None


def non_finite(value: Any) -> bool:
    """A float that is ``inf`` or ``nan`` (YAML ``.inf`` / ``.nan``)."""
    return isinstance(value, float) and not math.isfinite(value)


def rate_problem(rate: float, duration_s: float | None, requests: int | None) -> str | None:
    """Why an open-loop step at ``rate`` cannot run as asked, or ``None``."""
    if rate < MIN_RATE:
        return f"must be >= {MIN_RATE} requests/s (one arrival every {1 / MIN_RATE:.0f} s)"
    if rate > MAX_RATE:
        return f"must be <= {MAX_RATE:.0f} requests/s"
    if duration_s is not None and rate * duration_s < 1:
        return (
            f"expects one arrival every {1 / rate:.3g} s, longer than the step "
            f"(duration_s {duration_s:g}): the step would measure no request"
        )
    if requests is not None and requests / rate > MAX_SECONDS:
        return (
            f"{requests} requests at {rate:g}/s take about {requests / rate:.3g} s, "
            f"more than {MAX_SECONDS:.0f} s (one week)"
        )
    return None


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` cut out, so an error never shows a credential."""
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if sep and "@" in host:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
