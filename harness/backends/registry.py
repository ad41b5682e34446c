"""Pick the backend for a scenario's ``backend:`` name, validate it early, launch it safely.

Why one entry point: the orchestrator should not know how each backend is
built, only that ``launch`` yields a ready ``ServerHandle`` and that the
server is gone when the ``with`` block ends, whether it ended normally, by
exception or by Ctrl-C. ``validate_settings`` lets the orchestrator reject a
whole scenario before the first (slow) launch.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.backends.base import Backend, ServerHandle
from harness.backends.process import ProcessRegistry
from harness.matrix import Cell
from harness.scenario import Server


def _sim_module() -> Any:
    return importlib.import_module("harness.backends.sim")


def _build(factory: Callable[..., Any], **available: Any) -> Any:
    """Call a backend constructor with whichever of the keyword arguments it accepts."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**available)
    return factory(**{k: v for k, v in available.items() if k in params})


def create_backend(server: Server, *, repo_root: Path, registry: ProcessRegistry | None = None) -> Backend:
    """A fresh, not yet started backend object for ``server.backend``."""
    if server.backend == "vllm":
        from harness.backends.vllm import VllmBackend

        return VllmBackend(repo_root=repo_root, registry=registry)
    if server.backend == "external":
        from harness.backends.external import ExternalBackend

        return ExternalBackend()
    if server.backend == "sim":
        module = _sim_module()
        factory = getattr(module, "SimBackend", None) or module.create_backend
        backend: Backend = _build(factory, repo_root=repo_root, registry=registry)
        return backend
    raise ValueError(
        f"server '{server.name}': unknown backend {server.backend!r} (known: vllm, external, sim)"
    )


def validate_server(server: Server, cell_id: str | None = None) -> list[str]:
    """Backend-specific problems with a server's settings (empty list when fine)."""
    if server.backend == "vllm":
        from harness.backends.vllm import validate_settings as vllm_validate

        return vllm_validate(server, cell_id)
    if server.backend == "external":
        from harness.backends.external import validate_settings as external_validate

        return external_validate(server, cell_id)
    if server.backend == "sim":
        check = getattr(_sim_module(), "validate_settings", None)
        if check is None:
            return []
        try:
            return list(check(server, cell_id))
        except TypeError:
            return list(check(server))
    return [f"server '{server.name}': unknown backend {server.backend!r}"]


def validate_settings(cell: Cell) -> list[str]:
    """Problems with one expanded cell's server settings, for the orchestrator's up-front check."""
    return validate_server(cell.server, cell.cell_id)


@contextmanager
def launch(
    cell: Cell, workdir: Path, *, repo_root: Path, registry: ProcessRegistry | None = None
) -> Iterator[ServerHandle]:
    """Start the cell's server, yield its handle, and always stop it afterwards.

    ``stop`` also runs when ``start`` itself fails or is interrupted, so a
    half-started server (e.g. Ctrl-C during the health wait) is not leaked.
    """
    backend = create_backend(cell.server, repo_root=repo_root, registry=registry)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        handle = backend.start(cell, workdir)
        yield handle
    finally:
        backend.stop()
