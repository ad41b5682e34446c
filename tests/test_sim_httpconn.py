"""The sim's request queue: arrivals are stamped on read, handled one per loop turn, first come first served."""

from __future__ import annotations

import asyncio

from harness.sim.httpconn import ParseQueue


class _FakeConn:
    def __init__(self, name: str, log: list[tuple[str, int]], turn: list[int]) -> None:
        self.name, self.log, self.turn = name, log, turn

    def _parse(self) -> None:
        self.log.append((self.name, self.turn[0]))


def test_one_request_per_loop_turn_in_arrival_order() -> None:
    async def main() -> list[tuple[str, int]]:
        log: list[tuple[str, int]] = []
        turn = [0]
        queue = ParseQueue()
        for name in ("a", "b", "c"):
            queue.add(_FakeConn(name, log, turn))  # type: ignore[arg-type]
        for _ in range(6):
            await asyncio.sleep(0)
            turn[0] += 1
        return log

    log = asyncio.run(main())
    assert [name for name, _ in log] == ["a", "b", "c"]
    turns = [t for _, t in log]
    assert len(set(turns)) == 3  # each in a turn of its own


def test_a_burst_on_separate_connections_is_stamped_after_sending_and_timed_from_its_own_arrival(
    sim_server,
) -> None:
    """Eight requests written together: each arrival stamp follows the send, each TTFT counts from it."""
    import socket
    import time

    sim = sim_server(ttft_ms=5, itl_ms=1)
    port = sim.port
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    body = b'{"model":"m","prompt":"x","max_tokens":2,"stream":true}'
    sent = time.monotonic_ns()
    for i, s in enumerate(socks):
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-request-id: burst-%d\r\n"
            b"content-length: %d\r\n\r\n%s" % (i, len(body), body)
        )
    for s in socks:
        s.settimeout(5)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += s.recv(65536)
        s.close()
    sim.stop()
    truth = sim.truth()
    arrivals = sorted(truth[f"burst-{i}"].arrival_ns for i in range(8))
    assert all(a >= sent for a in arrivals)
    # every request's first chunk is due TTFT after *its own* arrival stamp
    for i in range(8):
        t = truth[f"burst-{i}"]
        assert t.ttft_ns is not None and t.ttft_ns >= 5_000_000 - 200_000
