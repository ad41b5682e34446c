"""Regenerate ``generation_pb2.py``/``generation_pb2_grpc.py`` from ``generation.proto``.

Run ``python -m harness.protocols.proto.generate`` after editing the proto. Why a
script and not import-time generation: the sim must run with only the runtime
dependencies (``grpcio``, ``protobuf``), and ``grpcio-tools`` is a dev tool.
Paths are given relative to the repository root so the stubs import each
other as ``harness.protocols.proto.generation_pb2``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROTO = "harness/protocols/proto/generation.proto"


def main() -> int:
    try:
        from grpc_tools import protoc
    except ImportError:
        print("grpcio-tools is not installed (pip install 'tokenbench[dev]')", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[3]
    os.chdir(root)
    args = ["protoc", "-I.", "--python_out=.", "--grpc_python_out=.", "--pyi_out=.", PROTO]
    rc = int(protoc.main(args))
    if rc:
        return rc
    # Keep the committed stubs ruff-clean, so `ruff check harness` stays meaningful.
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    outputs = [str(p) for p in Path(PROTO).parent.glob("generation_pb2*.py*")]
    subprocess.run([ruff, "check", "--fix-only", "--quiet", "--unsafe-fixes", *outputs], check=False)
    subprocess.run([ruff, "format", "--quiet", *outputs], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
