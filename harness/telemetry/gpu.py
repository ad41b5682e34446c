"""GPU memory and utilisation through NVML (``pynvml``, package nvidia-ml-py).

Why NVML directly rather than ``nvidia-smi``: it is an in-process call (no
subprocess per sample) and gives per-process memory, so VRAM can be
attributed to the server under test when the GPU is shared.

Machines without a GPU or driver are normal (CI, the simulator, CPU vLLM):
the probe then reports ``present = False`` once and every later ``sample``
returns nothing, with no error and no log noise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from harness.telemetry import Sample

log = logging.getLogger(__name__)


def _load_nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None when there is no usable GPU/driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU here, which is fine
        return None
    return pynvml


class GpuProbe:
    """Per-GPU ``gpu_used_bytes``, ``gpu_total_bytes``, ``gpu_util`` (percent), labelled ``gpu=<index>``.

    Also ``gpu_proc_used_bytes`` per GPU: the memory NVML attributes to the
    given pids (the server tree), when any of them is on that GPU. ``nvml``
    may be injected (tests use a double); otherwise ``pynvml`` is loaded.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml if nvml is not None else _load_nvml()
        self._handles: list[Any] = []
        self._warned = False
        if self._nvml is not None:
            try:
                count = int(self._nvml.nvmlDeviceGetCount())
                self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception:
                self._handles = []
        self.present = bool(self._handles)

    def sample(self, pids: Iterable[int] = ()) -> list[Sample]:
        if not self.present:
            return []
        assert self._nvml is not None
        wanted = set(pids)
        out: list[Sample] = []
        for index, handle in enumerate(self._handles):
            label = f"gpu={index}"
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                out.append(Sample("gpu_used_bytes", float(mem.used), label))
                out.append(Sample("gpu_total_bytes", float(mem.total), label))
                out.append(
                    Sample("gpu_util", float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu), label)
                )
                if wanted:
                    procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                    mine = [p.usedGpuMemory for p in procs if p.pid in wanted and p.usedGpuMemory is not None]
                    if mine:
                        out.append(Sample("gpu_proc_used_bytes", float(sum(mine)), label))
            except Exception as err:  # a lost GPU or an unsupported query: note once, keep sampling the rest
                if not self._warned:
                    log.info("NVML query on GPU %d failed: %s", index, type(err).__name__)
                    self._warned = True
        return out

    def close(self) -> None:
        if self._nvml is not None and self.present:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self.present = False
