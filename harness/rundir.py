"""The run folder: where one ``tokenbench run`` keeps everything it measured.

Layout (see README)::

    reports/<UTC timestamp>-<scenario>/
        scenario.yaml        the scenario as resolved (overrides applied, secrets redacted)
        env.json             host, CPU, GPU, driver, versions
        prompts.jsonl        the exact prompts sent (seeded)
        summary.json         results.RunSummary, rewritten after every step
        records.parquet      every request of every cell and step: raw stamps + derived ms columns
        records.csv          the same requests, derived columns only (TTFT, TPOT, E2E, UTC times)
        summary.csv          one row per cell × step (every StepMetrics field, flattened)
        summary.md           the Markdown summary, short enough for a pull-request comment
        timeseries.parquet   memory / GPU / server-metric samples
        report.html          the self-contained report
        cells/<cell>/        server.log, per-step records and Locust logs

Why per-step files plus merged files: a crash or Ctrl-C in cell 3 must not
lose cells 1 and 2, so each step's records land on disk as soon as the step
ends; the merged files are a convenience built at the end (and by
``tokenbench report``) from whatever steps exist.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import atomic_path, write_json
from harness.load.spool import merge_parts
from harness.owner import owner_alive
from harness.records import concat_record_files
from harness.results import RunSummary
from harness.runsecrets import Redactor


def utc_stamp(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class RunDir:
    """One run folder. ``secrets`` (the run's ``Redactor``) scrubs what its writers store."""

    path: Path
    secrets: Redactor = field(default_factory=Redactor, compare=False, repr=False)

    @classmethod
    def create(
        cls, root: Path, scenario_name: str, *, stamp: str | None = None, secrets: Redactor | None = None
    ) -> RunDir:
        # Absolute: servers run with their own working directory and are handed paths inside it.
        base = root.resolve() / f"{stamp or utc_stamp()}-{scenario_name}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True)
        return cls(path, secrets or Redactor())

    def cell_dir(self, cell_id: str) -> Path:
        d = self.path / "cells" / cell_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def step_dir(self, cell_id: str, step_id: str) -> Path:
        d = self.cell_dir(cell_id) / "steps" / step_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def write_summary(self, summary: RunSummary) -> None:
        write_json(self.summary_path, self.secrets.data(summary.model_dump(mode="json")))

    def read_summary(self) -> RunSummary:
        """The stored summary, settled: a run whose harness is gone without finishing is interrupted."""
        summary = RunSummary.model_validate_json(self.summary_path.read_text(encoding="utf-8"))
        if (
            not summary.complete
            and not summary.interrupted
            and summary.owner
            and not owner_alive(summary.owner)
        ):
            summary.mark_killed()
        return summary

    def step_record_files(self) -> list[Path]:
        return sorted(self.path.glob("cells/*/steps/*/records.parquet"))

    def cell_timeseries_files(self) -> list[Path]:
        return sorted(self.path.glob("cells/*/timeseries.parquet"))

    def recover_parts(self) -> list[Path]:
        """Merge the part files of steps that have no records file (a killed Locust or harness).

        Each Locust process writes its records to ``records.parquet.parts/``
        during the step (``harness.load.spool``); normally the step merges them
        itself, but a SIGKILL leaves only the parts. Returns the recovered files.
        """
        recovered = []
        for parts in sorted(self.path.glob("cells/*/steps/*/records.parquet.parts")):
            target = parts.with_name("records.parquet")
            if target.exists():
                shutil.rmtree(parts, ignore_errors=True)  # merged already; the crash came after
            elif merge_parts(target) is not None:
                recovered.append(target)
        return recovered

    def records_current(self) -> bool:
        """Whether the run-level records file already holds exactly the step files' rows, and is newer.

        Why: re-rendering a report (``tokenbench report``) of a finished run would
        otherwise rewrite every record again; for a million requests that is the
        largest cost of the whole report. Row counts come from Parquet footers.
        """
        out, steps = self.path / "records.parquet", self.step_record_files()
        if not out.is_file() or not steps or any(self.path.glob("cells/*/steps/*/records.parquet.parts")):
            return False
        try:
            newest = max(p.stat().st_mtime_ns for p in steps)
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in steps)
            return out.stat().st_mtime_ns >= newest and pq.ParquetFile(out).metadata.num_rows == rows
        except (OSError, pa.ArrowException):
            return False

    def merge(self) -> int:
        """Build run-level records/timeseries from the per-step and per-cell files (recovering parts).

        The records are rebuilt only when they are not ``records_current``.
        """
        self.recover_parts()
        out = self.path / "records.parquet"
        if self.records_current():
            n = pq.ParquetFile(out).metadata.num_rows
        else:
            n = concat_record_files(self.step_record_files(), out)
        tables = [pq.read_table(p) for p in self.cell_timeseries_files()]
        if tables:
            table = pa.concat_tables(tables, promote_options="default")
            with atomic_path(self.path / "timeseries.parquet") as tmp:
                pq.write_table(table, tmp)
        return n


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> dict[str, Any] | None:
    """GPU names and driver through NVML; None when there is no NVIDIA driver (the CPU path)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = []
        for i in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "count": count,
            "names": names,
            "name": names[0] if names else None,
            "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
        }
    finally:
        pynvml.nvmlShutdown()


def collect_env(backend_versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    """What the numbers depend on: host, CPU, GPU, driver and every relevant version."""
    import psutil

    from harness import __version__

    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
        },
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpus(),
        "versions": {
            "python": platform.python_version(),
            "harness": __version__,
            "locust": _version("locust"),
            "backends": dict(backend_versions or {}),
        },
    }
