"""``python -m harness.sim --port P ...``: run the simulated backend."""

from __future__ import annotations

import sys

from harness.sim.options import parse_options
from harness.sim.server import run


def main(argv: list[str] | None = None) -> int:
    return run(parse_options(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
