"""The one Locust user: it streams whatever protocol the plan names, and records every request.

Each task sends one request and queues the finished stream on the process's
``Finisher``, which has the protocol spec interpret it, hands a
``RequestRecord`` to the process's ``StepState`` and fires Locust's
``request`` event (so its console summary still works; no tokenbench number
comes from it). The user itself goes straight back to its next request: see
``finisher`` for why. That holds for both transports: an HTTP stream
(``httpstream.StreamClient.post``, per-read stamps) and a gRPC stream
(``grpcstream.stream_call``, per-message stamps, raw bytes) are both
interpreted only after they are over, off the read path.

Closed loop in duration mode on the native reader, the user keeps its next
``CHAIN_DEPTH`` requests handed to the reader thread (``_chain_next``): the
thread sends the oldest the moment a response ends, and the next task picks
it up (``nativeread.c`` says why). Whatever the thread did not send the user
admits and sends itself, as without a chain.

Requests are serialised by the protocol once per prompt and process
(``ProcessContext.bodies``); per request only the id (and, over HTTP, the
length) is added, before the wait for the scheduled time.

With ``connections: prewarm`` (the default) each user opens and verifies its
connection in ``on_start`` and waits at the process's barrier, so the first
admitted request, which starts the step's clock, finds every connection warm
(``prewarm``). Every record says whether its request reused the kept
connection and, if not, how long connecting took.

Pacing lives in ``wait_time``, not in the task: Locust kills a user that is
*waiting* at once on shutdown but lets a user that is *running a task* finish
(up to ``--stop-timeout``). So blocking for the next arrival happens while
waiting, and only a real in-flight request holds shutdown up.

Importing this module imports Locust, which monkey-patches the process: only
the locustfile should import it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import gevent
import grpc
from gevent.event import Event
from locust import User, task

from harness.load.collector import StepState, request_key
from harness.load.grpcstream import GrpcStream, auth_metadata, ensure_gevent, stream_call
from harness.load.httphead import finish_head, probe_head, request_prefix
from harness.load.httpstream import Outcome, StreamClient
from harness.load.nativehttp import Chain
from harness.load.nativeread import NativeReader
from harness.load.plan import LoadPlan
from harness.load.prewarm import prewarm_user
from harness.load.prompts import PromptSpec
from harness.load.recordbuild import build_record
from harness.load.schedule import ArrivalPool, derive_seed, poisson_arrivals
from harness.protocols.base import Event as StreamEvent
from harness.protocols.base import HttpProbe, ProtocolSpec, StreamResult
from harness.protocols.tls import grpc_channel
from harness.records import scrub_record


class HttpWire:
    """POST over one kept-alive connection; the request head is rendered once per user."""

    request_type = "POST"

    def __init__(
        self, plan: LoadPlan, spec: ProtocolSpec, headers: dict[str, str], reader: NativeReader | None = None
    ) -> None:
        self.client = StreamClient(
            plan.base_url,
            connect_timeout_s=min(plan.timeout_s, 30.0),
            tls=plan.tls,
            bounds=plan.bounds,
            reader=reader,
        )
        self.prefix = request_prefix(plan.base_url, spec.path, {**spec.http_headers(), **headers})
        # The prewarm's check: the protocol's first HTTP readiness request, with the auth headers.
        probe = next((p for p in spec.readiness if isinstance(p, HttpProbe)), None)
        self.probe = probe_head(plan.base_url, probe.path, headers) if probe is not None else None
        self.warm_timeout_s = min(plan.timeout_s, 30.0)
        self.can_chain = self.client.reader is not None  # the native reader on a plain socket

    def warm(self) -> tuple[str | None, int | None]:
        """Open and verify the kept connection (``StreamClient.probe``); why not, and the connect time."""
        error = self.client.probe(self.probe, self.warm_timeout_s)
        if error is not None:
            error = f"{self.client.host}:{self.client.port}: {error}"
        return error, self.client.connect_ns

    def connection(self) -> tuple[int | None, bool]:
        """The last request's connect time (None: it reused the kept connection) and whether it reused it."""
        connect_ns = self.client.connect_ns
        return connect_ns, connect_ns is None

    def prepare(self, key: str, body: bytes) -> bytes:
        return finish_head(self.prefix, key, len(body))

    def send(
        self,
        head: bytes,
        body: bytes,
        timeout_s: float,
        chains: Sequence[Chain] = (),
        sent: tuple[int, int] | None = None,
    ) -> Outcome:
        return self.client.post(head, body, timeout_s, chains, sent)

    def chain_sent(self) -> tuple[int, int] | None:
        return self.client.chain_sent()

    @staticmethod
    def unpack(raw: Outcome) -> tuple[Outcome, Sequence[StreamEvent]]:
        raw.splitter.close()
        return raw, raw.splitter.stream()  # with the splitter's SimpleBody: no tuple per event for OpenAI

    def close(self) -> None:
        self.client.close()


class GrpcWire:
    """A server-streaming call on the user's own channel; auth headers travel as metadata."""

    request_type = "grpc"
    can_chain = False  # grpc sends in its own C core; nothing to chain on

    def __init__(
        self, plan: LoadPlan, spec: ProtocolSpec, headers: dict[str, str], reader: NativeReader | None = None
    ) -> None:
        # ``reader`` is unused: grpc reads its streams in its own C threads, stamped per message.
        ensure_gevent()
        assert plan.grpc_target is not None  # LoadPlan.validate checks it for gRPC protocols
        self.channel = grpc_channel(plan.grpc_target, tls=plan.grpc_tls, options=plan.tls)
        self.call = self.channel.unary_stream(spec.path)  # bytes in, bytes out: no decoding on the read path
        self.metadata = [*auth_metadata(headers), *spec.grpc_metadata(plan)]
        self.bounds = plan.bounds
        self.target = plan.grpc_target
        self.warm_timeout_s = min(plan.timeout_s, 30.0)
        self.ready = False  # the channel has connected (prewarm) or carried a call already

    def warm(self) -> tuple[str | None, int | None]:
        """The channel reaches READY (it connects lazily otherwise); why not, and how long it took."""
        start = time.monotonic_ns()
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.warm_timeout_s)
        except grpc.FutureTimeoutError:
            return f"gRPC channel to {self.target} not ready within {self.warm_timeout_s:g} s", None
        self.ready = True
        return None, time.monotonic_ns() - start

    def connection(self) -> tuple[int | None, bool]:
        """gRPC connects inside the call, so no per-request connect time; reused once the channel was up."""
        reused, self.ready = self.ready, True
        return None, reused

    def prepare(self, key: str, body: bytes) -> list[tuple[str, str]]:
        # x-request-id joins the record to the server's log, as the HTTP X-Request-Id does.
        return [*self.metadata, ("x-request-id", key)]

    def send(
        self,
        metadata: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
        chains: Sequence[Chain] = (),
        sent: None = None,
    ) -> GrpcStream:
        return stream_call(self.call, body, timeout_s, metadata, self.bounds)

    @staticmethod
    def unpack(raw: GrpcStream) -> tuple[Outcome, list[StreamEvent]]:
        return raw.outcome(), raw.events

    def close(self) -> None:
        self.channel.close()


WIRES = {"http": HttpWire, "grpc": GrpcWire}
CHAINED = -1  # ``_pending``: the request due is the oldest handed to the reader thread (``_chain_next``)
# Requests a closed-loop user keeps handed to the reader thread ahead of the one in flight. Two, not
# one: with one, the request after next must be handed over within one response time of a response's
# end, and a Python thread starved after a burst of completions (1,024 streams on 2 cores) missed it
# for hundreds of streams at a time, each then idle until Python came (docs/metrics.md has figures).
CHAIN_DEPTH = 2


class StreamingUser(User):
    """The tokenbench user: pacing in ``wait_time``, one request per task, the protocol from the plan.

    The per-process context (plan, protocol spec, prompts, ``StepState``,
    arrival pool) is the ``tokenbench`` attribute the locustfile puts on the
    Locust environment.
    """

    abstract = True

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.ctx = environment.tokenbench
        self._pending: int | None = None
        # The next requests handed to the reader thread, oldest first (closed loop, native reader):
        # (request id, prompt index, prepared head, body). See ``_chain_next``.
        self._chained: deque[tuple[int, int, Any, bytes]] = deque()
        plan = self.ctx.plan
        self.spec: ProtocolSpec = self.ctx.protocol
        self.wire: Any = WIRES[self.spec.transport](plan, self.spec, self.ctx.headers, self.ctx.reader)
        self.id_prefix = request_key(plan.step_id, 0)[:-1]

    def wait_time(self) -> float:
        """Block (in Locust's *waiting* state) until the next request is due."""
        ctx = self.ctx
        if self._chained:
            self._pending = CHAINED  # sent by the reader thread, or not: ``one_request`` asks it
            return 0.0
        pool = ctx.arrival_pool()
        if pool is not None:
            scheduled = pool.next_arrival()
        else:
            now = time.monotonic_ns()
            scheduled = now if ctx.state.admit(now) else None
        if scheduled is None:
            Event().wait()  # this process's share is over: idle until Locust stops us
        self._pending = scheduled
        return 0.0

    @task
    def one_request(self) -> None:
        scheduled, self._pending = self._pending, None
        if scheduled is None:
            return  # the very first task runs before any wait: nothing is due yet
        ctx = self.ctx
        sent = None
        if scheduled == CHAINED:
            request_id, index, prepared, body = self._chained.popleft()
            sent = self.wire.chain_sent()
            if sent is None:  # not sent (past the deadline, or the connection closed), nor any after it
                self._release_chained(1)
                return  # admit anew
            scheduled = sent[0]
        else:
            request_id, index, prepared, body = self._new_request()
            wait_ns = scheduled - time.monotonic_ns()
            if wait_ns > 0:
                gevent.sleep(wait_ns / 1e9)
        raw = self.wire.send(prepared, body, ctx.plan.timeout_s, self._chain_next(), sent)
        if ctx.plan.kind == "concurrency":
            scheduled = raw.sent_ns  # closed loop: the request is due when it is sent
        conn = self.wire.connection()
        ctx.finisher.submit(
            lambda: self.finish(request_id, ctx.prompts[index], scheduled, raw, conn),
            raw.body_bytes,  # the Finisher bounds its backlog by the bytes it holds, too
        )

    def _new_request(self) -> tuple[int, int, Any, bytes]:
        """A fresh request: its id, prompt index, prepared head (or metadata) and body."""
        ctx = self.ctx
        request_id = ctx.state.next_request_id()
        index = (request_id + ctx.state.worker_index) % len(ctx.prompts)
        body = ctx.bodies.get(index)
        if body is None:
            body = ctx.bodies[index] = self.spec.build_request(ctx.plan, ctx.prompts[index])
        # == request_key(step_id, request_id): joins the record to the server's log
        return request_id, index, self.wire.prepare(f"{self.id_prefix}{request_id}", body), body

    def _chain_next(self) -> list[Chain]:
        """New requests for the reader thread, to keep ``CHAIN_DEPTH`` handed over; empty: not chained.

        Closed loop in duration mode on the native reader only: there each
        request is due exactly when the one before it ends, and the thread's
        deadline is the step's end of issuing, so it sends only what ``admit``
        would have admitted. Each request is reserved (``StepState.reserve``)
        until a task learns whether it went out.
        """
        ctx = self.ctx
        state = ctx.state
        deadline = state.issue_end_ns
        if (
            ctx.plan.kind != "concurrency"
            or not self.wire.can_chain
            or deadline is None
            or state.issuing_over
        ):
            return []
        chains = []
        while len(self._chained) < CHAIN_DEPTH:
            request = self._new_request()
            self._chained.append(request)
            _, _, prepared, body = request
            state.reserve()
            chains.append(Chain(prepared + body, deadline))
        return chains

    def _release_chained(self, popped: int) -> None:
        """Un-reserve requests the reader thread will not send: ``popped`` taken off the queue, and the rest."""
        for _ in range(popped + len(self._chained)):
            self.ctx.state.release()
        self._chained.clear()

    def finish(
        self, request_id: int, prompt: PromptSpec, scheduled: int, raw: Any, conn: tuple[int | None, bool]
    ) -> None:
        """Interpret a finished stream into a record (run by the process's ``Finisher``)."""
        outcome, events = self.wire.unpack(raw)
        result = self.spec.read_stream(events) if outcome.error_class is None or events else None
        self.record(request_id, prompt, scheduled, outcome, result, conn)

    def record(
        self,
        request_id: int,
        prompt: PromptSpec,
        scheduled: int,
        outcome: Outcome,
        result: StreamResult | None,
        conn: tuple[int | None, bool],
    ) -> None:
        """Keep the request's record, and fire Locust's request event (its stats are for display only)."""
        ctx = self.ctx
        state = ctx.state
        rec = build_record(
            ctx.plan,
            request_id=request_id,
            worker=state.worker_index,
            scheduled_ns=scheduled,
            warmup=state.is_warmup(scheduled),
            spec=prompt,
            outcome=outcome,
            result=result,
        )
        rec.connect_ns, rec.reused_connection = conn
        scrub_record(rec, ctx.secrets.message)  # before the record is kept, spooled or shown by Locust
        state.complete(rec, result.text if result is not None else "")
        self.environment.events.request.fire(
            request_type=self.wire.request_type,
            name=self.spec.path,
            response_time=(rec.end_ns - rec.scheduled_ns) / 1e6,
            response_length=outcome.body_bytes,
            exception=None if rec.ok else RuntimeError(f"{rec.error_class}: {rec.error_message}"),
            context={},
        )

    def on_start(self) -> None:
        """``connections: prewarm``: open and verify the connection, then wait for every user of the process.

        Nothing is admitted before the barrier opens, so the step's clock
        (``StepState.start``) starts on warm connections (``harness.load.prewarm``).
        """
        barrier = self.ctx.barrier
        if barrier is not None:
            prewarm_user(barrier, self.wire.warm)

    def on_stop(self) -> None:
        self._release_chained(0)  # stopped with chained requests: the connection closes below
        self.wire.close()


def make_pool(state: StepState, plan: LoadPlan) -> ArrivalPool | None:
    """This process's open-loop arrival pool (None in closed loop), started now: t0 is its start.

    Each of W processes runs an independent Poisson process of rate target/W
    with its own derived seed; together they offer the full rate.
    """
    if plan.kind != "rate":
        return None
    t0 = state.start()
    rate = plan.target / state.workers
    arrivals = poisson_arrivals(rate, derive_seed(plan.seed, plan.step_id, state.worker_index), start_ns=t0)
    pool = ArrivalPool(
        arrivals=arrivals, keep=state.admit, deadline_ns=state.issue_end_ns, on_drop=state.drop_unsent
    )
    pool.start()
    return pool
