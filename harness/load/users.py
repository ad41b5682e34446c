"""Locust users that stream OpenAI completions and record every request.

Each task sends one request through ``httpstream.StreamClient.post``
(per-read arrival stamps) and queues the finished stream on the process's
``Finisher``, which interprets it, hands a ``RequestRecord`` to the process's
``StepState`` and fires Locust's ``request`` event (so its console summary
still works; no tokenbench number comes from it). The user itself goes
straight back to its next request: see ``finisher`` for why.

Request bodies are serialised once per prompt and process (``ProcessContext.bodies``)
and the request head once per user; per request only the id and length change.

Pacing lives in ``wait_time``, not in the task: Locust kills a user that is
*waiting* at once on shutdown but lets a user that is *running a task* finish
(up to ``--stop-timeout``). So blocking for the next arrival happens while
waiting, and only a real in-flight request holds shutdown up.

``USER_CLASSES`` maps ``plan.api`` to a user class; other protocols (TGI,
TGIS) add an entry there. Importing this module imports Locust, which
monkey-patches the process: only the locustfile should import it.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import gevent
import orjson
from gevent.event import Event
from locust import User, task

from harness.load.collector import StepState, build_record, request_key
from harness.load.httpstream import Outcome, StreamClient, finish_head, request_prefix
from harness.load.plan import LoadPlan
from harness.load.prompts import PromptSpec
from harness.load.schedule import ArrivalPool, derive_seed, poisson_arrivals
from harness.load.sse import StreamResult, interpret_openai, openai_body
from harness.load.tgi import tgi_user_class
from harness.load.tgis import tgis_user_class


class StreamingUser(User):
    """Base for all tokenbench users: pacing in ``wait_time``, one request per task.

    The per-process context (plan, prompts, ``StepState``, arrival pool) is
    the ``tokenbench`` attribute the locustfile puts on the Locust environment.
    """

    abstract = True
    path: ClassVar[str] = ""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.ctx = environment.tokenbench
        self._pending: int | None = None
        plan = self.ctx.plan
        self.http = StreamClient(plan.base_url, connect_timeout_s=min(plan.timeout_s, 30.0))
        # Built once per user: only the request id and length change per request.
        self.head_prefix = request_prefix(
            plan.base_url,
            self.path,
            {"Content-Type": "application/json", "Accept": "text/event-stream", **self.ctx.headers},
        )
        self.id_prefix = request_key(plan.step_id, 0)[:-1]

    def wait_time(self) -> float:
        """Block (in Locust's *waiting* state) until the next request is due."""
        ctx = self.ctx
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
        state = ctx.state
        request_id = state.next_request_id()
        index = (request_id + state.worker_index) % len(ctx.prompts)
        body = ctx.bodies.get(index)
        if body is None:
            body = ctx.bodies[index] = orjson.dumps(self.build_body(ctx.prompts[index]))
        # == request_key(step_id, request_id): joins the record to the server's log
        head = finish_head(self.head_prefix, f"{self.id_prefix}{request_id}", len(body))
        wait_ns = scheduled - time.monotonic_ns()
        if wait_ns > 0:
            gevent.sleep(wait_ns / 1e9)
        outcome = self.http.post(head, body, ctx.plan.timeout_s)
        if ctx.plan.kind == "concurrency":
            scheduled = outcome.sent_ns  # closed loop: the request is due when it is sent
        ctx.finisher.submit(lambda: self.finish(request_id, ctx.prompts[index], scheduled, outcome))

    def finish(self, request_id: int, spec: PromptSpec, scheduled: int, outcome: Outcome) -> None:
        """Interpret a finished stream into a record (run by the process's ``Finisher``)."""
        result = self.interpret(outcome) if outcome.error_class is None or outcome.splitter.events else None
        self.record(request_id, spec, scheduled, outcome, result, request_type="POST", name=self.path)

    def record(
        self,
        request_id: int,
        spec: PromptSpec,
        scheduled: int,
        outcome: Outcome,
        result: StreamResult | None,
        *,
        request_type: str,
        name: str,
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
            spec=spec,
            outcome=outcome,
            result=result,
        )
        state.complete(rec, result.text if result is not None else "")
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(rec.end_ns - rec.scheduled_ns) / 1e6,
            response_length=outcome.body_bytes,
            exception=None if rec.ok else RuntimeError(f"{rec.error_class}: {rec.error_message}"),
            context={},
        )

    def build_body(self, spec: PromptSpec) -> dict[str, Any]:
        raise NotImplementedError

    def interpret(self, outcome: Outcome) -> StreamResult:
        raise NotImplementedError

    def on_stop(self) -> None:
        self.http.close()


class CompletionsUser(StreamingUser):
    abstract = True
    path = "/v1/completions"

    def build_body(self, spec: PromptSpec) -> dict[str, Any]:
        return openai_body(self.ctx.plan, spec)

    def interpret(self, outcome: Outcome) -> StreamResult:
        outcome.splitter.close()
        return interpret_openai(outcome.splitter.events, "completions")


class ChatUser(CompletionsUser):
    abstract = True
    path = "/v1/chat/completions"

    def interpret(self, outcome: Outcome) -> StreamResult:
        outcome.splitter.close()
        return interpret_openai(outcome.splitter.events, "chat")


USER_CLASSES: dict[str, type[StreamingUser]] = {
    "completions": CompletionsUser,
    "chat": ChatUser,
    "tgi": tgi_user_class(StreamingUser),
    "tgis": tgis_user_class(StreamingUser),
}


def user_class_for(api: str) -> type[StreamingUser]:
    try:
        return USER_CLASSES[api]
    except KeyError:
        raise ValueError(f"api {api!r} has no load user; known: {sorted(USER_CLASSES)}") from None


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
