"""Server backends: launch a server for one cell, report how to reach it, tear it down."""

from harness.backends.base import Backend, BackendStartError, ServerHandle

__all__ = ["Backend", "BackendStartError", "ServerHandle"]
