"""Connection prewarm (``workload.connections``): connects before the step's clock, or inside it on purpose.

The loopback runs are real Locust steps against ``python -m harness.sim`` at
32 closed-loop users; they assert where connects happen (record columns) and
that the prewarm's figures reach health.json, never speed. The barrier's own
behaviour (a refused server, a count that never arrives) runs in-process.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from harness.load.httphead import probe_head
from harness.load.httpstream import StreamClient
from harness.load.plan import LoadPlan, PlanError
from harness.load.prewarm import PrewarmBarrier, prewarm_reasons, prewarm_user, summarize_prewarm
from harness.load.runner import run_step
from harness.records import read_records
from load_plans import sim_plan

USERS = 32


def _run(
    tmp_path: Path, sim: Any, connections: str, **kw: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kw.setdefault("warmup_s", 0.0)
    plan = sim_plan(
        tmp_path, base_url=sim.base_url, target=USERS, duration_s=2.0, connections=connections, **kw
    )
    out = run_step(plan, tmp_path / "step")
    return read_records(out.records_path).to_pylist(), out.health


def _first_per_user(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first USERS requests sent: in closed loop, one per user (each waits for its own reply)."""
    return sorted(rows, key=lambda r: r["sent_ns"])[:USERS]


def test_prewarm_leaves_no_connect_inside_the_step(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=30, itl_ms=5)
    rows, health = _run(tmp_path, sim, "prewarm")
    assert len(rows) >= USERS
    assert all(r["error_class"] is None for r in rows), rows[0]["error_message"]
    assert all(r["reused_connection"] is True for r in rows)
    assert all(r["connect_ns"] is None for r in rows)
    assert health["connections"] == "prewarm"
    assert health["prewarm_users"] == USERS
    assert health["prewarm_failures"] == 0
    assert health["prewarm_timed_out"] is False
    assert isinstance(health["prewarm_s"], float) and health["prewarm_s"] >= 0
    assert health["prewarm_connect_max_ms"] > 0
    assert not any("prewarm" in r for r in health["reasons"])
    # The prewarm probe is the protocol's readiness request, one per user, before any generation.
    sim.stop()
    assert len(sim.truth()) == len(rows)


def test_cold_connects_on_each_users_first_request(tmp_path: Path, sim_server: Any) -> None:
    sim = sim_server(ttft_ms=30, itl_ms=5)
    rows, health = _run(tmp_path, sim, "cold")
    first = _first_per_user(rows)
    assert all(r["reused_connection"] is False and r["connect_ns"] > 0 for r in first)
    later = [r for r in rows if r not in first]
    assert later and all(r["reused_connection"] is True and r["connect_ns"] is None for r in later)
    assert sum(not r["reused_connection"] for r in rows) == USERS  # keep-alive: one connect per user
    assert health["connections"] == "cold"
    assert health["prewarm_users"] == 0 and health["prewarm_s"] is None


def test_prewarm_against_a_server_without_the_probe_path_still_warms(tmp_path: Path, sim_server: Any) -> None:
    """A 404 on ``/v1/models`` (a TGI-like server behind an OpenAI path) proves the connection all the same."""
    sim = sim_server(ttft_ms=10, itl_ms=2, no_openai_models=True)
    rows, health = _run(tmp_path, sim, "prewarm")
    assert health["prewarm_failures"] == 0
    assert rows and all(r["reused_connection"] for r in rows)


def test_plan_rejects_an_unknown_connections_mode(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"connections: must be one of .*'warm'"):
        sim_plan(tmp_path, connections="warm", duration_s=1.0)
    assert LoadPlan.from_dict(sim_plan(tmp_path, duration_s=1.0).to_dict()).connections == "prewarm"


# --- in-process: the probe and the barrier ----------------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on which nothing listens: connects are refused at once.

    The port stays bound (never listening) for the test, so a server that another test starts
    meanwhile cannot take it: a port that is merely free now can be, and a connect that reaches
    someone's server is no longer refused (the users then wait out their timeouts).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_probe_on_a_refusing_server_names_the_failure(refusing_port: int) -> None:
    port = refusing_port
    client = StreamClient(f"http://127.0.0.1:{port}", connect_timeout_s=2.0)
    why = client.probe(probe_head(f"http://127.0.0.1:{port}", "/v1/models", {}), 2.0)
    assert why is not None and "ConnectionRefusedError" in why
    assert client.connect_ns is not None and client.connect_ns > 0  # failed connects are timed too


def test_probe_fails_when_the_server_closes_after_answering() -> None:
    """``Connection: close`` after the probe means the prewarmed connection is gone before the clock."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        conn.close()

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = StreamClient(f"http://127.0.0.1:{port}", connect_timeout_s=2.0)
        why = client.probe(probe_head(f"http://127.0.0.1:{port}", "/health", {"Authorization": "x"}), 2.0)
        assert why is not None and "closes the connection" in why
    finally:
        thread.join(5)
        srv.close()


def test_barrier_opens_when_every_user_failed_against_a_refusing_server(refusing_port: int) -> None:
    """Refused connects are counted, the barrier opens once all users arrived, nothing hangs."""
    port = refusing_port
    barrier = PrewarmBarrier(expected=lambda: 4, deadline_s=30.0)
    head = probe_head(f"http://127.0.0.1:{port}", "/v1/models", {})

    def warm() -> tuple[str | None, int | None]:
        client = StreamClient(f"http://127.0.0.1:{port}", connect_timeout_s=2.0)
        return client.probe(head, 2.0), client.connect_ns

    users = [gevent.spawn(prewarm_user, barrier, warm) for _ in range(4)]
    gevent.joinall(users, timeout=10)
    assert all(u.dead for u in users)
    assert barrier.is_open and not barrier.timed_out
    report = barrier.report()
    assert (report["users"], report["failures"], report["late"]) == (4, 4, 0)
    assert len(report["errors"]) == 1 and "ConnectionRefusedError" in report["errors"][0]
    health = summarize_prewarm([report], "prewarm")
    assert (health["prewarm_users"], health["prewarm_failures"]) == (4, 4)
    reasons = prewarm_reasons(health)
    assert len(reasons) == 1 and reasons[0].startswith("4 of 4 users could not prewarm")


def test_barrier_opens_at_its_deadline_when_users_never_arrive() -> None:
    barrier = PrewarmBarrier(expected=lambda: 3, deadline_s=0.3)
    waiting = gevent.spawn(prewarm_user, barrier, lambda: (None, 1000))
    waiting.join(timeout=5)
    assert waiting.dead and barrier.timed_out
    late = gevent.spawn(prewarm_user, barrier, lambda: (None, 2000))
    late.join(timeout=5)
    assert late.dead
    report = barrier.report()
    assert (report["users"], report["late"], report["timed_out"]) == (2, 1, True)
    assert report["prewarm_s"] is not None and report["prewarm_s"] >= 0.3 - 0.05
    assert any("deadline" in r for r in prewarm_reasons(summarize_prewarm([report], "prewarm")))


def test_a_warm_that_raises_is_a_failure_not_an_escape() -> None:
    barrier = PrewarmBarrier(expected=lambda: 1, deadline_s=30.0)

    def boom() -> tuple[str | None, int | None]:
        raise RuntimeError("no channel")

    user = gevent.spawn(prewarm_user, barrier, boom)
    user.join(timeout=5)
    assert user.successful() and barrier.is_open
    assert barrier.report()["errors"] == ["RuntimeError: no channel"]
