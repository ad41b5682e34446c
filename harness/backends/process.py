"""Start, watch and reliably kill subprocess trees (servers, Locust, the simulator).

Why process groups: vLLM, Locust ``--processes`` and shell wrappers all fork
children. Killing only the direct child leaves orphans that hold the port,
the CPU cores and gigabytes of memory, and silently skew the next cell's
numbers. Every process here is started in its own session, so its whole tree
shares one process-group id that ``killpg`` reaches, grandchildren included.

``ProcessRegistry`` is the safety net for when the harness itself dies
(exception escaping, Ctrl-C, SIGTERM from CI): the orchestrator owns one,
every ``ManagedProcess`` registers its group in it, and ``kill_all`` (run from
``atexit`` and from the installed signal handlers) SIGKILLs whatever is left.
It is an object, not a module global, so tests and nested runs stay isolated.
It also carries the run's ``scrub`` (``Redactor.text``): every process started
under it writes its output through a :class:`~harness.backends.logpump.LogPump`
that scrubs each line, so a server's log never keeps a secret the run knows,
and the run's CPU ``placement`` (``harness/placement.py``): every process
started under it is pinned to its kind's CPU set (``server`` unless it says
``load``) and what it got is recorded.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx
import psutil

from harness.backends.base import BackendStartError
from harness.backends.logpump import LogPump, Scrub
from harness.owner import OWNER_ENV, owner_marker
from harness.placement import SERVER, Placement, format_cpu_list
from harness.redact import redact_command

SUPERVISOR = Path(__file__).with_name("supervise.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; the race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path | None, n: int = 50) -> list[str]:
    """The last ``n`` lines of a log file, or [] if it does not exist (yet)."""
    if path is None or not path.exists():
        return []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return [line.rstrip("\n") for line in deque(fh, maxlen=n)]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group ``pgid``.

    Zombies are skipped: a grandchild reparented to a container's PID 1 may
    stay a zombie if that init does not reap, yet it holds no resources.
    """
    members: list[int] = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented zombie may never be reaped in a container)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessRegistry:
    """Every process group the harness started, so a dying harness can kill them all.

    Signal-safe by construction: ``kill_all`` only calls ``os.killpg`` on a
    snapshot of integers; no locks are taken inside a signal handler. Use it
    as a context manager (``with ProcessRegistry() as reg:``) to install the
    atexit/signal hooks on entry and kill leftovers on exit.
    """

    def __init__(self, scrub: Scrub | None = None, placement: Placement | None = None) -> None:
        self.scrub = scrub
        self.placement = placement
        self._groups: set[int] = set()
        self._lock = threading.Lock()
        self._installed = False
        self._previous: dict[int, object] = {}

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)

    @property
    def groups(self) -> frozenset[int]:
        return frozenset(self._groups)

    def kill_all(self) -> None:
        """SIGKILL every registered group that is still alive. Safe to call repeatedly."""
        for pgid in list(self._groups):
            _signal_group(pgid, signal.SIGKILL)
        self._groups.clear()

    def install(self) -> None:
        """Kill all groups at interpreter exit and on SIGTERM/SIGHUP (Ctrl-C raises KeyboardInterrupt,
        which context managers already handle). Only the main thread may install signal handlers."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.kill_all)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        if not self._installed:
            return
        atexit.unregister(self.kill_all)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
        self._installed = False

    def __enter__(self) -> ProcessRegistry:
        self.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill_all()
        self.uninstall()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Defer to a handler that was there before (e.g. one turning SIGTERM into KeyboardInterrupt so
        ``finally`` blocks stop servers gracefully); with none, kill everything and exit."""
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
            return
        self.kill_all()
        raise SystemExit(128 + signum)


class ManagedProcess:
    """A subprocess in its own process group, logging to a file, torn down as a tree.

    Its stdout and stderr go through a pipe to a ``LogPump`` that scrubs each line
    (``scrub``, else the registry's, else secret shapes only) before it reaches ``log_path``.

    Starts immediately on construction, under ``supervise.py`` (the group
    leader, which takes the group down if the harness is SIGKILLed). ``pid`` is
    the command's own pid, the root of the tree telemetry measures; ``pgid`` is
    the group. ``terminate`` SIGTERMs the group, waits ``grace_s``, then SIGKILLs
    it; it is idempotent and tolerates a process that already died.

    ``cpus`` (default: the registry's placement for ``kind``) pins the whole
    group: the supervisor sets its own affinity before it starts the command,
    which inherits it, threads and children included.
    """

    def __init__(
        self,
        command: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        registry: ProcessRegistry | None = None,
        scrub: Scrub | None = None,
        cpus: frozenset[int] | None = None,
        kind: str = SERVER,
    ) -> None:
        self.command = list(command)
        placement = registry.placement if registry is not None else None
        if cpus is None and placement is not None:
            cpus = placement.for_kind(kind)
        pin = ["--cpus", format_cpu_list(cpus)] if cpus else []
        self.log_path = log_path
        self._registry = registry
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        child_env = dict(os.environ if env is None else env)
        child_env[OWNER_ENV] = owner_marker()
        read_fd, write_fd = os.pipe()
        out_read, out_write = os.pipe()
        try:
            self._popen = subprocess.Popen(
                [sys.executable, str(SUPERVISOR), str(write_fd), str(os.getpid()), *pin, "--", *self.command],
                stdout=out_write,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env,
                cwd=cwd,
                start_new_session=True,
                pass_fds=(write_fd,),
            )
        except OSError:
            os.close(read_fd)
            os.close(out_read)
            self._log.close()
            raise
        finally:
            os.close(write_fd)
            os.close(out_write)
        scrub = scrub or (registry.scrub if registry is not None else None)
        self._pump = LogPump(out_read, self._log, scrub, name=log_path.name)
        self.pgid: int = self._popen.pid  # start_new_session: the supervisor leads its own group
        self._terminated = False
        if registry is not None:
            registry.add(self.pgid)
        self.pid: int = _read_child_pid(read_fd) or self._popen.pid
        if placement is not None:
            placement.record(kind, self.pid, Path(self.command[0]).name if self.command else "?")

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command (through its supervisor); raises ``subprocess.TimeoutExpired``.

        A signal to the group kills the supervisor and the command at the same
        moment, but not atomically: the command is waited for too, briefly, so
        that "wait returned" still means "the command is gone".
        """
        code = self._popen.wait(timeout)
        deadline = time.monotonic() + 5.0
        while self.pid != self._popen.pid and _running(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.drain_log()
        return code

    def drain_log(self, timeout_s: float = 2.0) -> None:
        """Wait (briefly) until the output so far is in the log file: call before reading its tail.

        Bounded: a grandchild that left the group may hold the pipe open for ever.
        """
        self._pump.join(timeout_s)

    def terminate(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the whole group, SIGKILL after ``grace_s``; returns the child's exit code."""
        if self._terminated:
            return self._popen.returncode
        try:
            if _group_alive(self.pgid):
                _signal_group(self.pgid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline:
                    self._popen.poll()
                    if not _group_alive(self.pgid):
                        break
                    time.sleep(0.05)
                if _group_alive(self.pgid):
                    _signal_group(self.pgid, signal.SIGKILL)
            try:
                self._popen.wait(timeout=max(grace_s, 5.0))
            except subprocess.TimeoutExpired:
                _signal_group(self.pgid, signal.SIGKILL)
                self._popen.wait()
            self._reap_group(timeout=5.0)
        finally:
            self._terminated = True
            if self._registry is not None:
                self._registry.discard(self.pgid)
            self.drain_log(5.0)
            self._log.close()
        return self._popen.returncode

    def _reap_group(self, timeout: float) -> None:
        """Wait until no member of the group is left (grandchildren are reparented, not our zombies)."""
        deadline = time.monotonic() + timeout
        while _group_alive(self.pgid) and time.monotonic() < deadline:
            _signal_group(self.pgid, signal.SIGKILL)
            time.sleep(0.02)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.terminate()


class ProcessSet:
    """The processes of one server, by role, torn down together (a Caikit cell: TGIS, then the runtime).

    Why one object: a two-process server must never lose its second process
    when the first fails to start, or leave the first running when the
    second does. ``start`` adds processes in dependency order; ``terminate``
    SIGTERMs every group at once (so the grace periods overlap instead of
    adding up), then stops each, last started first. Idempotent.
    """

    def __init__(self, registry: ProcessRegistry | None = None) -> None:
        self.registry = registry
        self._procs: dict[str, ManagedProcess] = {}

    def start(
        self, role: str, command: list[str], *, log_path: Path, env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:  # fmt: skip
        """Start ``command`` as ``role``; its output is scrubbed as the registry says."""
        if role in self._procs:
            raise ValueError(f"a process with role {role!r} was already started")
        proc = ManagedProcess(command, log_path=log_path, env=env, cwd=cwd, registry=self.registry)
        self._procs[role] = proc
        return proc

    def __getitem__(self, role: str) -> ManagedProcess:
        return self._procs[role]

    def __contains__(self, role: object) -> bool:
        return role in self._procs

    @property
    def pids(self) -> dict[str, int]:
        """Role -> root pid, for ``ServerHandle.processes`` (what telemetry samples)."""
        return {role: proc.pid for role, proc in self._procs.items()}

    def terminate(self, grace_s: float = 10.0) -> None:
        procs = list(reversed(self._procs.values()))
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pgid, signal.SIGTERM)
        for proc in procs:
            proc.terminate(grace_s)


def _read_child_pid(fd: int, timeout_s: float = 10.0) -> int | None:
    """The command's pid as the supervisor reports it; None if it could not start it."""
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        data = os.read(fd, 32) if ready else b""
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def wait_ready(
    urls: Iterable[str],
    timeout_s: float,
    proc: ManagedProcess | None = None,
    *,
    headers: dict[str, str] | None = None,
    interval_s: float = 0.25,
) -> float:
    """Poll every URL until each answers 2xx; return the seconds it took.

    Fails fast, with the log tail, if ``proc`` exits while we wait: a server
    that crashed on a bad flag should not cost the user the full timeout.
    """
    pending = list(urls)
    started = time.monotonic()
    deadline = started + timeout_s
    log_path = proc.log_path if proc is not None else None
    last_error = "no attempt made"
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), headers=headers or {}) as client:
        while pending:
            if proc is not None and (code := proc.poll()) is not None:
                proc.drain_log()
                raise BackendStartError(
                    f"server process exited with code {code} before becoming ready "
                    f"(command: {shlex.join(redact_command(proc.command))})",
                    tail(log_path),
                )
            try:
                response = client.get(pending[0])
                if 200 <= response.status_code < 300:
                    pending.pop(0)
                    continue
                last_error = f"{pending[0]} answered HTTP {response.status_code}"
            except httpx.HTTPError as err:
                last_error = f"{pending[0]}: {type(err).__name__}: {err}"
            if time.monotonic() >= deadline:
                raise BackendStartError(
                    f"server not ready after {timeout_s:.0f}s; last error: {last_error}", tail(log_path)
                )
            time.sleep(interval_s)
    return time.monotonic() - started


def await_ready(
    what: str,
    cell_id: str,
    urls: Iterable[str],
    timeout_s: float,
    proc: ManagedProcess,
    stop: Callable[[], None],
    **kwargs: Any,
) -> float:
    """:func:`wait_ready` for a server we launched: on any failure, or Ctrl-C, stop it first.

    The error names the cell and the backend (``cell 'x': vLLM did not start: ...``), so a
    failed cell in a long sweep says which configuration broke.
    """
    try:
        return wait_ready(urls, timeout_s, proc, **kwargs)
    except BaseException as err:
        stop()
        if isinstance(err, BackendStartError):
            raise BackendStartError(
                f"cell '{cell_id}': {what} did not start: {err.message}", err.log_tail
            ) from None
        raise
