"""The fidelity benchmark's CPU watcher: /proc parsing, the window average, and a live thread told apart by name."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import pytest

from harness.fidelity.cpuwatch import (
    READER_THREAD_NAME,
    CpuWatcher,
    Sample,
    parse_proc_stat,
    parse_thread_stat,
    window_cores,
)


def test_a_thread_name_with_spaces_and_parentheses_does_not_shift_the_fields() -> None:
    fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 30  # utime (14th) 150, stime (15th) 50
    line = "4242 (odd (name) x) " + " ".join(fields)
    assert parse_thread_stat(line) == ("odd (name) x", 200)


def test_proc_stat_counts_iowait_as_idle_and_keeps_steal_apart() -> None:
    text = "cpu  100 5 20 300 7 1 2 9 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    busy, idle, steal = parse_proc_stat(text)
    assert (busy, idle, steal) == (100 + 5 + 20 + 1 + 2, 300 + 7, 9)


def _s(t: float, truth: float, readers: float, py: float, busy: float, idle: float) -> Sample:
    kinds = {"truth_server": truth, "reader_threads": readers, "locust_python": py}
    return Sample(t, kinds, busy, idle, 0.0)


def test_window_average_interpolates_between_samples_and_leaves_out_what_lies_outside() -> None:
    # 0-10 s: truth 1 core; 10-20 s: truth 0.5 core, readers 1 core; the machine has 2 cores
    samples = [
        _s(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        _s(10.0, 10.0, 0.0, 2.0, 12.0, 8.0),
        _s(20.0, 15.0, 10.0, 3.0, 30.0, 10.0),
    ]
    m = window_cores(samples, 5.0, 15.0)
    assert m["window_s"] == 10.0
    assert m["truth_server"] == pytest.approx(0.75)  # half of each half
    assert m["reader_threads"] == pytest.approx(0.5)
    assert m["locust_python"] == pytest.approx(0.15)
    assert m["idle"] == pytest.approx(0.5)
    assert m["other"] == pytest.approx((1.2 + 1.8) / 2 - 0.75 - 0.5 - 0.15)
    assert window_cores(samples, 12.0, 18.0)["truth_server"] == pytest.approx(0.5)


def test_a_window_the_samples_do_not_cover_has_no_figures() -> None:
    samples = [_s(0.0, 0, 0, 0, 0, 0), _s(1.0, 1, 0, 0, 1, 1)]
    for start, end in ((-1.0, 0.5), (0.5, 2.0), (0.5, 0.5)):
        m = window_cores(samples, start, end)
        assert m["window_s"] is None and m["truth_server"] is None and m["idle"] is None
    assert window_cores([], 0.0, 1.0)["reader_threads"] is None


class NamedSpinner:
    """A thread named like the reader that spins ``cpu_s`` of its own CPU when told to, then stays alive until let go.

    CPU time, not wall time: a loaded machine cannot shrink what it spins.
    Alive until ``finish``: a thread gone from /proc keeps its last figure.
    """

    def __init__(self, cpu_s: float) -> None:
        self.cpu_s = cpu_s
        self.named, self._go, self.spun, self._release = (threading.Event() for _ in range(4))
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        assert self.named.wait(30)

    def _run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, READER_THREAD_NAME.encode(), 0, 0, 0)  # PR_SET_NAME, as pthread_setname_np does
        self.named.set()
        self._go.wait(60)
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        self.spun.set()
        self._release.wait(60)

    def spin(self) -> None:
        """Spin now and return when done."""
        self._go.set()
        assert self.spun.wait(60)

    def finish(self) -> None:
        self._release.set()
        self._thread.join()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_thread_named_like_the_reader_counts_as_reader_time_and_the_rest_as_the_process() -> None:
    watcher = CpuWatcher(truth_pid=None)
    worker = NamedSpinner(0.2)
    watcher.sample([os.getpid()])
    worker.spin()
    watcher.sample([os.getpid()])
    worker.finish()
    first, last = watcher.samples
    spun = last.kinds["reader_threads"] - first.kinds["reader_threads"]
    assert spun >= 0.15  # the named thread's 0.2 s spin, all of it after the first sample (10-ms ticks)
    assert last.kinds["truth_server"] == 0.0  # no truth process given
    assert last.t > first.t and last.busy >= first.busy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_thread_that_exits_keeps_its_time_so_no_total_goes_down() -> None:
    watcher = CpuWatcher(truth_pid=None)
    worker = NamedSpinner(0.05)
    worker.spin()
    watcher.sample([os.getpid()])
    worker.finish()  # gone from /proc/<pid>/task now
    watcher.sample([os.getpid()])
    first, last = watcher.samples
    assert first.kinds["reader_threads"] > 0
    assert last.kinds["reader_threads"] >= first.kinds["reader_threads"]
