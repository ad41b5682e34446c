"""A backend added the way the README says: this one module plus one registration line
(``tests/test_backends_registry.py`` adds the line). Used to prove the registry needs nothing else."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from harness.backends.base import BackendSettings, BackendSpec, ConcurrencyCap
from harness.backends.process import ProcessRegistry
from harness.scenario import Scalar


class EchoSettings(BackendSettings):
    pool_size: int | None = Field(default=None, ge=1)


class EchoSpec(BackendSpec):
    name = "echo"
    label = "echo"
    Settings = EchoSettings
    protocols = ("tgis",)

    def concurrency_cap(self, settings: dict[str, Scalar]) -> ConcurrencyCap | None:
        size = settings.get("pool_size")
        return ConcurrencyCap(int(size) if isinstance(size, int) else 5, "pool_size")

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> object:  # type: ignore[override]
        raise NotImplementedError("echo is never started in these tests")


SPEC = EchoSpec()
