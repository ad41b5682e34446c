"""ManagedProcess, ProcessRegistry, free_port, tail and wait_ready: teardown and fail-fast behaviour."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from harness.backends.base import BackendStartError
from harness.backends.process import (
    ManagedProcess,
    ProcessRegistry,
    free_port,
    group_members,
    tail,
    wait_ready,
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_members(pgid: int, count: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = group_members(pgid)
        if len(members) >= count:
            return members
        time.sleep(0.02)
    raise AssertionError(f"group {pgid} never reached {count} members: {group_members(pgid)}")


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_tail_returns_last_lines_and_handles_missing(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(120)))
    assert tail(log, 3) == ["line 117", "line 118", "line 119"]
    assert len(tail(log)) == 50
    assert tail(tmp_path / "missing.log") == []
    assert tail(None) == []


def test_terminate_kills_whole_group_including_grandchildren(tmp_path: Path) -> None:
    proc = ManagedProcess(["bash", "-c", "sleep 300 & sleep 300 & wait"], log_path=tmp_path / "p.log")
    members = _wait_for_members(proc.pgid, 3)
    assert proc.pid in members
    assert proc.poll() is None
    code = proc.terminate(grace_s=5)
    assert code is not None
    assert [pid for pid in members if _alive(pid)] == []
    assert group_members(proc.pgid) == []


def test_terminate_escalates_to_sigkill_when_term_is_ignored(tmp_path: Path) -> None:
    script = "trap '' TERM; echo ready; sleep 300 & wait; sleep 300"
    proc = ManagedProcess(["bash", "-c", script], log_path=tmp_path / "p.log")
    members = _wait_for_members(proc.pgid, 2)
    # Two members are the supervisor and bash before it has run the trap; "ready" comes after the trap.
    # A TERM sent before it killed bash (exit -15 in a fresh-clone CI run).
    deadline = time.monotonic() + 5
    while "ready" not in (tmp_path / "p.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    code = proc.terminate(grace_s=0.5)
    assert time.monotonic() - started < 10
    assert code == -signal.SIGKILL
    assert [pid for pid in members if _alive(pid)] == []


def test_terminate_is_idempotent_and_tolerates_dead_process(tmp_path: Path) -> None:
    proc = ManagedProcess([sys.executable, "-c", "print('bye')"], log_path=tmp_path / "p.log")
    assert proc.wait(timeout=10) == 0
    assert proc.terminate() == 0
    assert proc.terminate() == 0
    assert "bye" in (tmp_path / "p.log").read_text()


def test_wait_raises_timeout_expired(tmp_path: Path) -> None:
    with ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log") as proc:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
    assert not _alive(proc.pid)


def test_context_manager_terminates_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log") as proc:
            raise RuntimeError("boom")
    assert not _alive(proc.pid)


def test_env_and_cwd_are_applied(tmp_path: Path) -> None:
    env = {**os.environ, "TB_PROBE": "hello"}
    proc = ManagedProcess(
        ["bash", "-c", 'echo "$TB_PROBE $(pwd)"'], log_path=tmp_path / "p.log", env=env, cwd=tmp_path
    )
    proc.wait(timeout=10)
    proc.terminate()
    assert (tmp_path / "p.log").read_text().strip() == f"hello {tmp_path}"


def test_registry_tracks_and_kills_groups(tmp_path: Path) -> None:
    registry = ProcessRegistry()
    proc = ManagedProcess(["bash", "-c", "sleep 300 & wait"], log_path=tmp_path / "p.log", registry=registry)
    members = _wait_for_members(proc.pgid, 2)
    assert registry.groups == {proc.pgid}
    registry.kill_all()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in members) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in members if _alive(p)] == []
    assert registry.groups == frozenset()
    proc.terminate()


def test_registry_forgets_terminated_process(tmp_path: Path) -> None:
    registry = ProcessRegistry()
    proc = ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log", registry=registry)
    proc.terminate()
    assert registry.groups == frozenset()


def test_registry_context_installs_and_restores_handlers(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with ProcessRegistry() as registry:
        assert signal.getsignal(signal.SIGTERM) != before
        proc = ManagedProcess(["sleep", "30"], log_path=tmp_path / "p.log", registry=registry)
    assert signal.getsignal(signal.SIGTERM) == before
    proc.wait(timeout=10)
    assert not _alive(proc.pid)


def test_wait_ready_fails_fast_with_log_tail(tmp_path: Path) -> None:
    script = "for i in $(seq 1 80); do echo \"log line $i\"; done; echo 'fatal: bad flag' ; exit 3"
    proc = ManagedProcess(["bash", "-c", script], log_path=tmp_path / "s.log")
    started = time.monotonic()
    with pytest.raises(BackendStartError) as info:
        wait_ready([f"http://127.0.0.1:{free_port()}/health"], timeout_s=120, proc=proc)
    assert time.monotonic() - started < 30
    err = info.value
    assert "exited with code 3" in str(err)
    assert len(err.log_tail) == 50
    assert err.log_tail[-1] == "fatal: bad flag"
    assert err.log_tail[0] == "log line 32"
    assert "fatal: bad flag" in err.details()
    proc.terminate()


def test_wait_ready_times_out_with_last_error() -> None:
    with pytest.raises(BackendStartError, match="not ready after"):
        wait_ready([f"http://127.0.0.1:{free_port()}/health"], timeout_s=0.5, interval_s=0.05)


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        count = self.hits.get(self.path, 0) + 1
        self.hits[self.path] = count
        # /slow answers 503 twice before it is ready.
        status = 503 if self.path == "/slow" and count <= 2 else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def http_server() -> Iterator[str]:
    _Handler.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wait_ready_polls_until_every_url_is_ready(http_server: str) -> None:
    took = wait_ready([f"{http_server}/health", f"{http_server}/slow"], timeout_s=10, interval_s=0.01)
    assert took >= 0
    assert _Handler.hits["/health"] == 1
    assert _Handler.hits["/slow"] == 3


HARNESS_SCRIPT = """
import sys, time
from pathlib import Path
from harness.backends.process import ManagedProcess, ProcessRegistry
with ProcessRegistry() as registry:
    proc = ManagedProcess(["bash", "-c", "sleep 300 & wait"], log_path=Path(sys.argv[1]), registry=registry)
    print(proc.pgid, flush=True)
    time.sleep(300)
"""


def test_dying_harness_kills_its_process_groups(tmp_path: Path) -> None:
    """SIGTERM to the harness (e.g. from CI) must not leave servers behind."""
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS_SCRIPT, str(tmp_path / "p.log")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert harness.stdout is not None
        pgid = int(harness.stdout.readline())
        members = _wait_for_members(pgid, 2)
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=20) != 0
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in members) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p for p in members if _alive(p)] == []
    finally:
        harness.kill()
        harness.wait()


def test_existing_sigterm_handler_is_honoured_then_groups_killed(tmp_path: Path) -> None:
    def to_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    original = signal.signal(signal.SIGTERM, to_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ProcessRegistry() as registry:
                proc = ManagedProcess(["sleep", "300"], log_path=tmp_path / "p.log", registry=registry)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                pytest.fail("SIGTERM should have raised KeyboardInterrupt")
        assert signal.getsignal(signal.SIGTERM) is to_interrupt
        proc.wait(timeout=10)
        assert not _alive(proc.pid)
    finally:
        signal.signal(signal.SIGTERM, original)


def test_process_set_tears_down_every_tree_together(tmp_path: Path) -> None:
    """A two-process server (TGIS + Caikit runtime): both trees, grandchildren included, are gone."""
    from harness.backends.process import ProcessSet

    spawn = [
        sys.executable,
        "-c",
        "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)",
    ]
    registry = ProcessRegistry()
    procs = ProcessSet(registry)
    first = procs.start("tgis", spawn, log_path=tmp_path / "tgis.log")
    second = procs.start("caikit", spawn, log_path=tmp_path / "caikit.log")
    members = _wait_for_members(first.pgid, 2) + _wait_for_members(second.pgid, 2)
    assert procs.pids == {"tgis": first.pid, "caikit": second.pid} and "tgis" in procs
    assert registry.groups == {first.pgid, second.pgid}
    with pytest.raises(ValueError, match="already started"):
        procs.start("tgis", spawn, log_path=tmp_path / "again.log")
    started = time.monotonic()
    procs.terminate(grace_s=5.0)
    assert time.monotonic() - started < 8, "the two grace periods overlap"
    assert not any(_alive(pid) for pid in members)
    assert registry.groups == frozenset()
    procs.terminate()  # idempotent
