"""Running a server's image with podman or docker, and making sure the container goes away.

Why its own module: a container outlives the process that started it. ``podman run`` /
``docker run`` is only a client; the container is the runtime's (conmon, containerd), so
killing the client's process group, which is how every other server here is stopped, can
leave the container running with the GPU and the port. Teardown therefore has three layers:

1. ``--rm`` on the run, so a container that stops is also removed;
2. on ``stop``: ``RUNTIME stop --time GRACE NAME``, then ``RUNTIME rm -f NAME`` (both
   tolerated when the container is already gone), then the client's process group;
3. if the harness itself is SIGKILLed, the supervisor (``supervise.py``) SIGTERMs the
   client's group, and the client forwards the signal to the container (both runtimes proxy
   signals by default: ``--sig-proxy=true``), which stops and is removed (``--rm``).

The GPU flags differ: docker takes ``--gpus all`` (or ``--gpus device=0,1``); podman takes CDI
devices, ``--device nvidia.com/gpu=all`` (or one ``--device nvidia.com/gpu=N`` per index).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath

STOP_SLACK_S = 30.0


def container_name(prefix: str, cell_id: str) -> str:
    """A unique, valid container name (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``) that says which cell it serves."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", cell_id).strip("-.")[:40] or "cell"
    return f"{prefix}-{safe}-{uuid.uuid4().hex[:8]}"


def gpu_flags(flavour: str, gpus: str) -> list[str]:
    """``--gpus ...`` (docker) or ``--device nvidia.com/gpu=...`` (podman, CDI); none for ``none``."""
    if gpus == "none":
        return []
    if flavour == "docker":
        return ["--gpus", "all" if gpus == "all" else f"device={gpus}"]
    return [a for index in gpus.split(",") for a in ("--device", f"nvidia.com/gpu={index}")]


@dataclass
class ContainerRun:
    """One ``RUNTIME run`` invocation: what to map into the container and what to run in it."""

    runtime: str  # the executable (name on PATH, or a path)
    flavour: str  # "podman" | "docker": which flags it takes
    name: str
    image: str
    publish: list[tuple[str, int, int]]  # (host ip, host port, container port)
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)  # (host, container, read-only)
    env_names: list[str] = field(default_factory=list)  # passed by name: values come from the client's env
    gpus: str = "all"
    shm_size: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # after the image: the entrypoint's arguments

    def command(self) -> list[str]:
        """``RUNTIME run --rm --name N -p ... -v ... -e NAME ... IMAGE ARGS``.

        Environment variables are passed by name only (``-e HF_TOKEN``), so no value, secret or
        not, is ever on the recorded command line; the runtime reads them from its own environment.
        """
        cmd = [self.runtime, "run", "--rm", "--name", self.name]
        for key, value in self.labels.items():
            cmd += ["--label", f"{key}={value}"]
        for host_ip, host_port, port in self.publish:
            cmd += ["-p", f"{host_ip}:{host_port}:{port}"]
        if self.shm_size:
            cmd += ["--shm-size", self.shm_size]
        cmd += gpu_flags(self.flavour, self.gpus)
        for host, inside, read_only in self.volumes:
            cmd += ["-v", f"{host}:{inside}" + (":ro" if read_only else "")]
        for name in self.env_names:
            cmd += ["-e", name]
        return [*cmd, self.image, *self.args]


def resolve_executable(given: str, home: Path) -> str | None:
    """A program by path (relative: cwd, then the repo root) or by name on PATH; None if not found."""
    if "/" not in given:
        return shutil.which(given)
    path = Path(given).expanduser()
    for candidate in (path, home / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return str(candidate.absolute())
    return None


def flavour_of(runtime: str) -> str:
    """``podman`` or ``docker``, from the executable's file name (validated in the settings)."""
    return PurePath(runtime).name


def remove_container(
    runtime: str, name: str, grace_s: float, env: Mapping[str, str], log_path: Path | None
) -> None:
    """``stop --time GRACE`` then ``rm -f``; a container that is already gone is not an error.

    The runtime's own output goes to the server log, so a teardown that failed says why there.
    """
    for cmd, timeout in (
        ([runtime, "stop", "--time", str(int(grace_s)), name], grace_s + STOP_SLACK_S),
        ([runtime, "rm", "-f", name], STOP_SLACK_S),
    ):
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=dict(env), check=False
            )
            text = (out.stdout + out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            text = f"{type(err).__name__}: {err}"
        if log_path is not None and text:
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(f"[tokenbench] {' '.join(cmd)}: {text}\n")
