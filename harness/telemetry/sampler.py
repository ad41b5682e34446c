"""Background sampling of a server's memory, GPU and ``/metrics`` during a cell.

Why threads (not gevent, not a subprocess): the orchestrator is plain Python
and the probes are short blocking calls (``/proc`` reads, NVML, one HTTP GET
a second). Two threads keep a slow ``/metrics`` answer from delaying the
memory samples: one samples the process tree and GPU every ``interval_s``,
the other scrapes Prometheus every ``scrape_interval_s``.

Rows are long format, one value per row, stamped with ``time.monotonic_ns()``
(the clock request records use) and the load step running at that moment, so
the report can line memory and queue depth up with latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.atomic import atomic_path
from harness.results import RemoteGpu
from harness.telemetry import Sample
from harness.telemetry.clock import ClockMap
from harness.telemetry.dcgm import RemoteGpuQuery, Window
from harness.telemetry.gpu import GpuProbe
from harness.telemetry.process_mem import ProcessTreeProbe
from harness.telemetry.prometheus import PrometheusScraper

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# (name, Arrow type) of each column; pyarrow is imported only to write or read the file, so the
# sampler itself runs where pyarrow is not installed (the GPU check on a lent machine).
TIMESERIES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("cell_id", "string"),
    ("step_id", "string"),
    ("t_ns", "int64"),
    ("source", "string"),
    ("name", "string"),
    ("value", "float64"),
    ("labels", "string"),
)
TIMESERIES_FIELDS: tuple[str, ...] = tuple(name for name, _ in TIMESERIES_COLUMNS)
SOURCES: tuple[str, ...] = ("process", "gpu", "prometheus", "dcgm")
ROLE = "server"  # the one tree of a single-process server (``harness.backends.base.MAIN_ROLE``)


def timeseries_schema() -> pa.Schema:
    """The Arrow schema of ``timeseries.parquet``."""
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in TIMESERIES_COLUMNS])


def write_timeseries(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write telemetry rows atomically as Parquet with ``timeseries_schema()``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [r.get(name) for r in rows] for name in TIMESERIES_FIELDS}
    table = pa.table(columns, schema=timeseries_schema())
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)


def read_timeseries(path: Path) -> list[dict[str, Any]]:
    """Rows as written by ``write_timeseries`` (the shape ``memory_summary`` takes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such timeseries file")
    try:
        table = pq.read_table(path, schema=timeseries_schema())
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable timeseries file: {err}") from None
    return table.to_pylist()


class TelemetrySampler:
    """Samples one cell's server until ``stop()``; see the module docstring.

    ``server_pid`` None (an external endpoint) skips process sampling;
    ``metrics_url`` None skips Prometheus. ``headers`` (auth) are used for the
    scrape only and never stored. ``gpu`` may be injected for tests.

    ``processes`` (role -> root pid, e.g. ``{"tgis": 11, "caikit": 12}``)
    samples several process trees of one server instead of ``server_pid``'s
    one; each tree's samples carry the label ``role=<role>``, all stamped with
    the same time, so summing a timestamp's rows gives the whole server.

    ``local`` False (a server not on this host: ``external``, ``kserve``)
    samples neither this host's GPUs nor any process tree: they are not the
    server's. ``remote`` then asks the cluster's Prometheus for the server
    pod's GPUs, once, in :meth:`stop`, over the windows of the steps seen
    through :meth:`set_step`; ``remote_status`` says what it answered.
    """

    def __init__(
        self,
        *,
        cell_id: str,
        server_pid: int | None,
        metrics_url: str | None,
        processes: dict[str, int] | None = None,
        headers: dict[str, str] | None = None,
        interval_s: float = 0.25,
        scrape_interval_s: float = 1.0,
        gpu: GpuProbe | None = None,
        local: bool = True,
        remote: RemoteGpuQuery | None = None,
    ) -> None:
        if interval_s <= 0 or scrape_interval_s <= 0:
            raise ValueError(f"intervals must be > 0 (got {interval_s}, {scrape_interval_s})")
        self.cell_id = cell_id
        self.server_pid = server_pid
        self.local = local
        self.processes = (
            dict(processes) if processes else ({ROLE: server_pid} if server_pid is not None else {})
        )
        if not local:
            self.processes = {}
        self.remote = remote
        self.remote_status: RemoteGpu | None = None
        self.clock: ClockMap | None = None
        self._windows: list[Window] = []
        self._step_start_ns = 0
        self._start_ns = 0
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.scrape_interval_s = scrape_interval_s
        self._headers = dict(headers or {})
        self._gpu = gpu
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._step_id: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scraper: PrometheusScraper | None = None
        self._stopped = False

    # -- public ---------------------------------------------------------------
    def start(self) -> None:
        if self._threads or self._stopped:
            raise RuntimeError("TelemetrySampler.start() may be called once")
        self.clock = ClockMap.read()
        self._start_ns = time.monotonic_ns()
        if self.local:
            gpu = self._gpu if self._gpu is not None else GpuProbe()
            self._gpu = gpu
            self._add("gpu", [Sample("gpu_present", 1.0 if gpu.present else 0.0)], time.monotonic_ns())
            probes = {role: ProcessTreeProbe(pid) for role, pid in self.processes.items()}
            self._spawn("telemetry-local", self.interval_s, lambda: self._sample_local(probes, gpu))
        if self.metrics_url:
            scraper = PrometheusScraper(
                self.metrics_url,
                headers=self._headers,
                timeout_s=min(
                    0.8, max(0.5, self.scrape_interval_s)
                ),  # a fast grid must not fail slow renders
            )
            self._scraper = scraper
            self._spawn(
                "telemetry-prometheus", self.scrape_interval_s, lambda: self._sample_prometheus(scraper)
            )

    def set_step(self, step_id: str | None) -> None:
        """Tag later samples with this load step (None between steps); each step's window is kept."""
        now = time.monotonic_ns()
        with self._lock:
            if self._step_id is not None:
                self._windows.append(Window(self._step_id, self._step_start_ns, now))
            self._step_id, self._step_start_ns = step_id, now

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling, release the probes and return all rows (time-ordered per source)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5.0)
        if not self._stopped:
            self._stopped = True
            if self._scraper is not None:
                self._scraper.close()
            if self._gpu is not None:
                self._gpu.close()
            if self.remote is not None and self.clock is not None:
                self._fetch_remote(self.remote, self.clock)
        with self._lock:
            return list(self._rows)

    @property
    def scrape_failures(self) -> int:
        return self._scraper.failures if self._scraper is not None else 0

    def __enter__(self) -> TelemetrySampler:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------
    def _spawn(self, name: str, period_s: float, tick: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._loop, args=(period_s, tick, name), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self, period_s: float, tick: Callable[[], None], name: str) -> None:
        """Tick on a fixed grid; when a tick overruns, skip ahead rather than burst to catch up."""
        period_ns = int(period_s * 1e9)
        next_ns = time.monotonic_ns()
        failed = False
        while not self._stop.is_set():
            try:
                tick()
            except Exception as err:  # a probe bug must not end telemetry for the whole cell
                if not failed:
                    log.warning("%s: sample failed (%s: %s); continuing", name, type(err).__name__, err)
                    failed = True
            next_ns += period_ns
            now = time.monotonic_ns()
            if next_ns < now:
                next_ns = now + period_ns - (now - next_ns) % period_ns
            self._stop.wait((next_ns - now) / 1e9)

    def _sample_local(self, probes: dict[str, ProcessTreeProbe], gpu: GpuProbe) -> None:
        t_ns = time.monotonic_ns()
        pids: set[int] = set()
        for role, probe in probes.items():
            label = f"role={role}"
            self._add("process", [Sample(s.name, s.value, label) for s in probe.sample()], t_ns)
            pids |= probe.pids
        if gpu.present:
            self._add("gpu", gpu.sample(frozenset(pids)), t_ns)

    def _fetch_remote(self, remote: RemoteGpuQuery, clock: ClockMap) -> None:
        """The cluster's series for the steps seen (the whole cell when none ran), once."""
        now = time.monotonic_ns()
        with self._lock:
            if self._step_id is not None:  # stopped during a step (a failure, Ctrl-C)
                self._windows.append(Window(self._step_id, self._step_start_ns, now))
                self._step_id = None
            windows = list(self._windows) or [Window(None, self._start_ns, now)]
        rows, self.remote_status = remote.fetch(self.cell_id, windows, clock, now, self._start_ns)
        with self._lock:
            self._rows.extend(rows)

    def _sample_prometheus(self, scraper: PrometheusScraper) -> None:
        t_ns, samples = scraper.scrape()
        self._add("prometheus", samples, t_ns)

    def _add(self, source: str, samples: list[Sample], t_ns: int) -> None:
        if not samples:
            return
        with self._lock:
            step = self._step_id
            self._rows.extend(
                {
                    "cell_id": self.cell_id,
                    "step_id": step,
                    "t_ns": t_ns,
                    "source": source,
                    "name": s.name,
                    "value": float(s.value),
                    "labels": s.labels,
                }
                for s in samples
            )
