"""A stand-in ``pynvml`` module for CLI tests: put ``tests/nvml_double`` first on PYTHONPATH.

A test double (see ``tests/fake_nvml.py``): the harness process then "sees"
two GPUs with 2 GiB and 1 GiB in use, constant, so a test can tell whether a
cell recorded this host's GPUs. It proves which cells sample local NVML; it
proves nothing about real NVML.
"""

from __future__ import annotations

from fake_nvml import FakeNvml

_fake = FakeNvml(grow=0.0)
nvmlInit = _fake.nvmlInit  # noqa: N816 - pynvml's names
nvmlShutdown = _fake.nvmlShutdown  # noqa: N816
nvmlDeviceGetCount = _fake.nvmlDeviceGetCount  # noqa: N816
nvmlDeviceGetHandleByIndex = _fake.nvmlDeviceGetHandleByIndex  # noqa: N816
nvmlDeviceGetMemoryInfo = _fake.nvmlDeviceGetMemoryInfo  # noqa: N816
nvmlDeviceGetUtilizationRates = _fake.nvmlDeviceGetUtilizationRates  # noqa: N816
nvmlDeviceGetName = _fake.nvmlDeviceGetName  # noqa: N816
nvmlSystemGetDriverVersion = _fake.nvmlSystemGetDriverVersion  # noqa: N816
nvmlDeviceGetComputeRunningProcesses = _fake.nvmlDeviceGetComputeRunningProcesses  # noqa: N816
