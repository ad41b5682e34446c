"""The protocols tokenbench can drive: one registration line per protocol module.

Adding a protocol is one module that defines ``SPEC`` (a ``ProtocolSpec``)
plus one line in ``_SPECS`` below. Everything else (the scenario's ``api``
check, the load user, readiness, prompts) asks this registry, so no other
file changes. The mapping is read-only: nothing registers at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from harness.protocols import caikit_grpc, caikit_http, chat, completions, tgi, tgis
from harness.protocols.base import ProtocolError, ProtocolSpec

_SPECS: tuple[ProtocolSpec, ...] = (
    completions.SPEC,
    chat.SPEC,
    tgi.SPEC,
    tgis.SPEC,
    caikit_grpc.SPEC,
    caikit_http.SPEC,
)

PROTOCOLS: Mapping[str, ProtocolSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def protocol_names() -> list[str]:
    return sorted(PROTOCOLS)


def get_protocol(name: str) -> ProtocolSpec:
    """The spec called ``name``; the error lists the known protocols."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ProtocolError(f"unknown protocol {name!r} (known: {', '.join(protocol_names())})") from None
