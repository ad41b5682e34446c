"""Server backends: one module per backend defining ``SPEC``, registered in ``registry.py``.

A spec (``base.BackendSpec``) owns the backend's settings model, the protocols it
serves, the environments it needs and its launcher (start/stop).
"""

from harness.backends.base import (
    Backend,
    BackendSettings,
    BackendSpec,
    BackendStartError,
    ConcurrencyCap,
    ServerHandle,
)

__all__ = ["Backend", "BackendSettings", "BackendSpec", "BackendStartError", "ConcurrencyCap", "ServerHandle"]
