"""Test double standing in for a backend's interpreter: it logs what it was given, then runs the sim.

Real servers print their configuration at start-up (vLLM logs its non-default arguments,
``--api-key`` among them; launch scripts echo their environment), so a secret handed to a
server in ``args`` or ``env`` reaches ``server.log`` unless the harness scrubs the log. This
double does the same on purpose: it prints its argv and the secret-named variables of its
environment, drops the flags the simulator does not know (``--api-key``, ``--hf-token``,
``--middleware`` and their values) and execs ``python ARGS`` with the rest.
What it proves: that those lines are scrubbed on their way into the log. What it does not:
anything about how a real vLLM formats its log.
"""

from __future__ import annotations

import os
import sys

from harness.redact import is_secret_name

DROPPED = ("--api-key", "--hf-token", "--middleware")


def main(argv: list[str]) -> None:
    print(f"server args: {argv}", flush=True)
    shown = {k: v for k, v in sorted(os.environ.items()) if is_secret_name(k)}
    print(f"server env: {shown}", flush=True)
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in DROPPED:
            skip = True
        elif not arg.startswith(tuple(f"{d}=" for d in DROPPED)):
            rest.append(arg)
    os.execv(sys.executable, [sys.executable, *rest])


if __name__ == "__main__":
    main(sys.argv[1:])
