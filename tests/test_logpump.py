"""The log pump: a child's output reaches its log file line by line, scrubbed, and nothing is lost."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from harness.backends import logpump
from harness.backends.logpump import LogPump
from harness.backends.process import ManagedProcess, ProcessRegistry
from harness.redact import REDACTED
from harness.runsecrets import Redactor


class _Sink(io.BytesIO):
    def close(self) -> None:  # keep the bytes readable after the pump is done
        pass


def _pump(chunks: list[bytes], scrub=None) -> bytes:
    read_fd, write_fd = os.pipe()
    sink = _Sink()
    pump = LogPump(read_fd, sink, scrub)
    for chunk in chunks:
        os.write(write_fd, chunk)
    os.close(write_fd)
    assert pump.join(5.0)
    return sink.getvalue()


def test_a_secret_split_across_reads_is_scrubbed_and_every_byte_else_kept() -> None:
    redactor = Redactor(["pump-secret-123"])
    out = _pump(
        [b"start\nkey=pump-se", b"cret-123 end\r", b"progress 50%\rlast line, no newline"], redactor.text
    )
    assert out == f"start\nkey={REDACTED} end\rprogress 50%\rlast line, no newline".encode()


def test_shapes_are_scrubbed_without_known_values() -> None:
    assert _pump([b"Authorization: Bearer abcdef123456\n"]) == f"Authorization: Bearer {REDACTED}\n".encode()


def test_an_endless_line_is_written_in_bounded_pieces(monkeypatch) -> None:
    monkeypatch.setattr(logpump, "MAX_LINE", 1000)
    pieces: list[int] = []

    def count(text: str) -> str:
        pieces.append(len(text))
        return text

    out = _pump([b"x" * 4500], count)
    assert out == b"x" * 4500 and max(pieces) <= 1000


def test_a_managed_process_log_is_scrubbed_with_the_registry_secrets(tmp_path: Path) -> None:
    registry = ProcessRegistry(scrub=Redactor(["proc-secret-777"]).text)
    log = tmp_path / "server.log"
    code = "import sys; print('args', sys.argv[1:]); print('Bearer proc-secret-777', file=sys.stderr)"
    with registry:
        proc = ManagedProcess(
            [sys.executable, "-c", code, "--api-key", "proc-secret-777"], log_path=log, registry=registry
        )
        assert proc.wait(30) == 0
        proc.terminate()
    text = log.read_text()
    assert "proc-secret-777" not in text
    assert f"'--api-key', '{REDACTED}'" in text and f"Bearer {REDACTED}" in text
