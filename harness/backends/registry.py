"""Every backend, by ``servers[].backend`` name, and the one way to launch a cell's server.

Why one table of module paths: adding a backend is one module that defines
``SPEC`` (a :class:`~harness.backends.base.BackendSpec`) plus one line here,
and nothing else in the harness names it. Modules are imported on first use,
so validating a scenario does not import launch code it does not need, and
``harness.scenario`` (imported by every backend module) can consult the
registry without an import cycle.

``launch`` is the orchestrator's only entry point: it yields a ready
``ServerHandle`` and the server is gone when the ``with`` block ends, whether
it ended normally, by exception or by Ctrl-C.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from harness.backends.base import Backend, BackendSpec, ServerHandle
from harness.backends.process import ProcessRegistry
from harness.matrix import Cell
from harness.scenario import Server

# One line per backend: name -> module that defines ``SPEC``.
BACKEND_MODULES: dict[str, str] = {
    "vllm": "harness.backends.vllm",
    "external": "harness.backends.external",
    "sim": "harness.backends.sim",
    "tgis": "harness.backends.tgis",
    "caikit": "harness.backends.caikit",
    "kserve": "harness.backends.kserve",
    "tgi": "harness.backends.tgi",
}


class UnknownBackendError(ValueError):
    """A ``backend:`` name no module registers."""


def backend_names() -> tuple[str, ...]:
    return tuple(BACKEND_MODULES)


@cache
def get_spec(name: str) -> BackendSpec:
    """The spec registered as ``name``; :class:`UnknownBackendError` listing the known names."""
    module = BACKEND_MODULES.get(name)
    if module is None:
        raise UnknownBackendError(f"unknown backend {name!r} (known: {', '.join(backend_names())})")
    spec = importlib.import_module(module).SPEC
    if not isinstance(spec, BackendSpec) or spec.name != name:
        raise TypeError(f"{module}.SPEC must be a BackendSpec named {name!r}")
    return spec


def all_specs() -> list[BackendSpec]:
    return [get_spec(name) for name in BACKEND_MODULES]


def create_backend(server: Server, *, home: Path, registry: ProcessRegistry | None = None) -> Backend:
    """A fresh, not yet started backend object for ``server.backend``."""
    return get_spec(server.backend).create(home=home, registry=registry)


def validate_server(server: Server, cell_id: str | None = None) -> list[str]:
    """Backend-specific problems with a server's settings, each value of a sweep list on its own."""
    try:
        spec = get_spec(server.backend)
    except UnknownBackendError as err:
        return [f"server '{server.name}': {err}"]
    return spec.validate(server, cell_id)


def validate_settings(cell: Cell) -> list[str]:
    """Problems with one expanded cell's server settings, for the orchestrator's up-front check."""
    try:
        spec = get_spec(cell.server.backend)
    except UnknownBackendError as err:
        return [f"server '{cell.server.name}': {err}"]
    return spec.validate_cell(cell)


@contextmanager
def launch(
    cell: Cell, workdir: Path, *, home: Path, registry: ProcessRegistry | None = None
) -> Iterator[ServerHandle]:
    """Start the cell's server, yield its handle, and always stop it afterwards.

    ``stop`` also runs when ``start`` itself fails or is interrupted, so a
    half-started server (e.g. Ctrl-C during the health wait) is not leaked.
    """
    backend = create_backend(cell.server, home=home, registry=registry)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        handle = without_url_credentials(backend.start(cell, workdir))
        yield handle
    finally:
        backend.stop()


def without_url_credentials(handle: ServerHandle) -> ServerHandle:
    """A handle whose ``base_url`` carries ``user:pass@`` gets it as an Authorization header instead.

    Whatever backend handed it back: the URL goes into the load plan, the Host
    header and the report, and none of them may hold a credential. An explicit
    ``Authorization`` header the backend set is kept (it wins over the userinfo).
    """
    from harness.runsecrets import basic_auth, split_userinfo

    clean, userinfo = split_userinfo(handle.base_url)
    if userinfo is None:
        return handle
    handle.base_url = clean
    if not any(k.lower() == "authorization" for k in handle.headers):
        handle.headers = {**handle.headers, "Authorization": basic_auth(userinfo)}
    return handle
