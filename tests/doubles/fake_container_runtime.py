#!/usr/bin/env python3
"""A TEST DOUBLE of ``podman`` / ``docker`` (whichever name it is run as): not a container runtime.

It implements the four sub-commands the ``tgi`` backend uses, strictly enough to catch a wrong
command line, and runs the "container" as a host process:

* ``run``: checks every option the harness generates (``--rm``, ``--name``, ``--label``,
  ``-p IP:HOST:CONTAINER``, ``--shm-size``, the GPU flag: docker ``--gpus all|device=N``,
  podman ``--device nvidia.com/gpu=all|N``, ``-v HOST:CONTAINER[:ro]``, ``-e NAME[=VALUE]``),
  refuses any other option (exit 125, as both runtimes do), then runs the image's entrypoint,
  which for any image is the fake TGI launcher next to this file, with the container's view
  translated to the host: ``--port`` through the ``-p`` mapping (an unpublished port is
  unreachable, as it would be), ``--hostname`` to the published IP, ``--model-id`` through the
  volume mounts, ``HF_HOME`` to the volume mounted at ``/data``, and ``-e`` variables set. The
  "container" runs in its own session, so, as with a real runtime, killing the client does
  **not** stop it; only ``stop``/``rm -f`` or a signal the client forwards (sig-proxy) does;
* ``stop [--time N] NAME``: SIGTERM, then SIGKILL after N seconds; with ``--rm`` it is removed;
* ``rm -f NAME``: kill and remove;
* ``ps``: the names of the containers that exist (one per line).

State lives in ``$TOKENBENCH_FAKE_CONTAINERS`` (one JSON file per container), which the tests
inspect to prove that no container outlives the harness. What it does not do: isolate anything
(the container sees the host's environment, files and network namespace), pull images, or
touch a GPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "text-generation-launcher"
FLAVOUR = Path(sys.argv[0]).name if Path(sys.argv[0]).name in ("podman", "docker") else "podman"
VALUE_OPTIONS = (
    "--name",
    "--label",
    "-p",
    "--publish",
    "--shm-size",
    "--gpus",
    "--device",
    "-v",
    "--volume",
    "-e",
    "--env",
)


def state_dir() -> Path:
    path = Path(
        os.environ.get("TOKENBENCH_FAKE_CONTAINERS")
        or Path(tempfile.gettempdir()) / "tokenbench-fake-containers"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def fail(message: str, code: int = 125) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return code


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def parse_run(argv: list[str]) -> tuple[dict, list[str]] | str:
    """``run`` options until the image; returns (options, [image, *args]) or an error message."""
    opts: dict = {
        "rm": False,
        "name": None,
        "labels": [],
        "publish": [],
        "shm": None,
        "gpus": [],
        "volumes": [],
        "env": [],
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return opts, argv[i:]
        if arg == "--rm":
            opts["rm"] = True
            i += 1
            continue
        if arg not in VALUE_OPTIONS:
            return f"unknown flag: {arg}"
        if i + 1 >= len(argv):
            return f"flag needs an argument: {arg}"
        value = argv[i + 1]
        i += 2
        if arg == "--name":
            opts["name"] = value
        elif arg == "--label":
            if "=" not in value:
                return f"invalid label {value!r}: expected KEY=VALUE"
            opts["labels"].append(value)
        elif arg in ("-p", "--publish"):
            parts = value.split(":")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                return f"invalid publish {value!r}: expected IP:HOST_PORT:CONTAINER_PORT"
            opts["publish"].append((parts[0], int(parts[1]), int(parts[2])))
        elif arg == "--shm-size":
            if not value[:-1].isdigit() and not value.isdigit():
                return f"invalid shm size {value!r}"
            opts["shm"] = value
        elif arg == "--gpus":
            if not (value == "all" or value.isdigit() or value.startswith("device=")):
                return f'invalid --gpus {value!r}: expected "all", a count or "device=IDS"'
            opts["gpus"].append(value)
        elif arg == "--device":
            if FLAVOUR == "podman" and value.startswith("nvidia.com/gpu="):
                opts["gpus"].append(value)
            elif not value.startswith("/dev/"):
                return f"invalid device {value!r}"
        elif arg in ("-v", "--volume"):
            parts = value.split(":")
            if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
                return f"invalid volume {value!r}: expected /HOST:/CONTAINER[:ro]"
            if len(parts) == 3 and parts[2] not in ("ro", "rw"):
                return f"invalid volume option {parts[2]!r}"
            if not Path(parts[0]).exists():
                return f"statfs {parts[0]}: no such file or directory"
            opts["volumes"].append((parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"))
        elif arg in ("-e", "--env"):
            opts["env"].append(value)
    return "requires at least 1 arg (an image)"


def to_host(path: str, volumes: list[tuple[str, str, bool]]) -> str:
    for host, inside, _ in volumes:
        if path == inside or path.startswith(inside.rstrip("/") + "/"):
            return host + path[len(inside) :]
    return path


def run(argv: list[str]) -> int:
    parsed = parse_run(argv)
    if isinstance(parsed, str):
        return fail(parsed)
    opts, rest = parsed
    name = opts["name"] or f"fake-{os.getpid()}"
    state = state_dir() / f"{name}.json"
    if state.exists():
        return fail(f'the container name "{name}" is already in use')
    image, args = rest[0], list(rest[1:])
    env = dict(os.environ)
    for item in opts["env"]:
        key, eq, value = item.partition("=")
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    for host, inside, _ in opts["volumes"]:
        if inside == "/data":
            env["HF_HOME"] = host
    translated: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if arg == "--port" and value is not None:
            mapped = [p for p in opts["publish"] if p[2] == int(value)]
            translated += ["--port", str(mapped[0][1]) if mapped else "0"]  # unpublished: unreachable
            i += 2
        elif arg == "--hostname" and value is not None:
            translated += ["--hostname", opts["publish"][0][0] if opts["publish"] else "127.0.0.1"]
            i += 2
        elif arg == "--model-id" and value is not None:
            translated += ["--model-id", to_host(value, opts["volumes"])]
            i += 2
        else:
            translated.append(arg)
            i += 1
    print(f"fake {FLAVOUR}: container {name} from image {image} (gpus {opts['gpus'] or 'none'})", flush=True)
    child = subprocess.Popen([str(LAUNCHER), *translated], env=env, start_new_session=True)
    state.write_text(
        json.dumps({"name": name, "pid": child.pid, "client": os.getpid(), "image": image, "rm": opts["rm"]})
    )

    def forward(signum: int, frame: object) -> None:  # --sig-proxy=true, both runtimes' default
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    if opts["rm"]:
        state.unlink(missing_ok=True)
    return code if code >= 0 else 128 - code


def kill(name: str, grace_s: float) -> bool:
    state = state_dir() / f"{name}.json"
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    pid = int(data["pid"])
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive(pid):
            break
    deadline = time.monotonic() + 5.0  # the client removes a --rm container once it has exited
    while data.get("rm") and state.exists() and alive(int(data["client"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def main(argv: list[str]) -> int:
    if not argv:
        return fail("missing command")
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run(rest)
    if command == "stop":
        grace = 10.0
        names = []
        i = 0
        while i < len(rest):
            if rest[i] in ("--time", "-t"):
                grace = float(rest[i + 1])
                i += 2
            else:
                names.append(rest[i])
                i += 1
        for name in names:
            if not kill(name, grace):
                return fail(f'no container with name or ID "{name}" found: no such container')
            print(name)
        return 0
    if command == "rm":
        force = "-f" in rest or "--force" in rest
        for name in [a for a in rest if not a.startswith("-")]:
            if not kill(name, 0.0) and not force:
                return fail(f'no container with name or ID "{name}" found: no such container', 1)
            (state_dir() / f"{name}.json").unlink(missing_ok=True)
        return 0
    if command == "ps":
        for path in sorted(state_dir().glob("*.json")):
            print(path.stem)
        return 0
    return fail(f"unrecognized command `{FLAVOUR} {command}`")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
