"""A test double of ``pynvml`` (nvidia-ml-py): the calls ``harness.telemetry.gpu`` makes, nothing more.

What it proves: the probe's and the sampler's handling of NVML's answers (two
GPUs, per-process memory, failures). What it does not: that a real driver
answers this way; ``harness.telemetry.gpucheck`` checks that on a GPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

GIB = 2**30


@dataclass
class FakeNvml:
    """A double for pynvml: two GPUs, memory used grows by ``grow`` (1 GiB) per query of GPU 0."""

    used: list[float] = field(default_factory=lambda: [2.0 * GIB, 1.0 * GIB])
    grow: float = 1.0 * GIB
    procs: dict[int, list[Any]] = field(default_factory=dict)
    shutdown_calls: int = 0
    fail_count: bool = False

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - pynvml's names
        if self.fail_count:
            raise RuntimeError("NVML Shared Library Not Found")
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        value = self.used[h]
        if h == 0:
            self.used[0] += self.grow
        return SimpleNamespace(used=value, total=80.0 * GIB, free=80.0 * GIB - value)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(gpu=50 + h, memory=10)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:  # noqa: N802
        return self.procs.get(h, [])

    def nvmlInit(self) -> None:  # noqa: N802
        return None

    def nvmlDeviceGetName(self, h: int) -> str:  # noqa: N802
        return f"Fake GPU {h} (test double)"

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "0.0-double"

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdown_calls += 1
