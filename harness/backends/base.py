"""The contract between the orchestrator and every server backend.

Why a Protocol plus one dataclass: the orchestrator, the load generator, the
telemetry sampler and the report all need the same few facts about a running
server (where it listens, which model name to ask for, which process tree to
measure, how it was launched), whatever launched it: vLLM, an external
endpoint or the simulator. Keeping this module tiny and dependency-free lets
other backends (``sim.py``) be written against it without touching launch code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.matrix import Cell


@dataclass
class ServerHandle:
    """What a started server looks like to the rest of the harness.

    ``headers`` carries auth for requests. It is excluded from ``repr`` and must
    never be persisted or logged; use :meth:`public_dict` to serialise a handle.
    """

    base_url: str
    served_model: str
    command: list[str]
    env: dict[str, str]
    version: str | None
    launch_s: float | None
    log_path: Path | None
    pid: int | None
    metrics_url: str | None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    simulated: bool = False
    # ``host:port`` of a gRPC (TGIS) endpoint next to the HTTP one, when the server has one.
    grpc_target: str | None = None

    def public_dict(self) -> dict[str, object]:
        """Everything safe to write into summary.json (no headers)."""
        return {
            "base_url": self.base_url,
            "served_model": self.served_model,
            "command": list(self.command),
            "env": dict(self.env),
            "version": self.version,
            "launch_s": self.launch_s,
            "log_path": str(self.log_path) if self.log_path else None,
            "pid": self.pid,
            "metrics_url": self.metrics_url,
            "simulated": self.simulated,
            "grpc_target": self.grpc_target,
        }


class BackendStartError(RuntimeError):
    """A server did not come up. ``log_tail`` holds the last lines of its log for the report.

    ``str(err)`` is the one-paragraph message only, so callers that store the
    tail separately do not get it twice; :meth:`details` joins both for a terminal.
    """

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail: list[str] = list(log_tail or [])

    def details(self) -> str:
        if not self.log_tail:
            return self.message
        return self.message + "\n--- last server log lines ---\n" + "\n".join(self.log_tail)


class Backend(Protocol):
    """A way to bring one cell's server up and down.

    ``start`` writes the server log to ``workdir / "server.log"``; ``stop`` is
    idempotent and safe to call after a failed ``start``.
    """

    def start(self, cell: Cell, workdir: Path) -> ServerHandle: ...

    def stop(self) -> None: ...
