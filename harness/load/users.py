"""Locust users that stream OpenAI completions and record every request.

Each task sends one request through ``sse.stream_post`` (per-read arrival
stamps), interprets the stream afterwards, and hands a ``RequestRecord`` to
the process's ``StepState``. Locust's ``request`` event is fired too, so its
console summary still works, but no tokenbench number comes from it.

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
from geventhttpclient import HTTPClient
from locust import User, task

from harness.load.collector import StepState, build_record, request_key
from harness.load.plan import LoadPlan
from harness.load.prompts import PromptSpec
from harness.load.schedule import ArrivalPool, derive_seed, poisson_arrivals
from harness.load.sse import Outcome, StreamResult, interpret_openai, openai_body, stream_post
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
        base = self.ctx.plan.base_url.rstrip("/")
        self.client_http = HTTPClient.from_url(
            base + "/",
            concurrency=1,
            connection_timeout=min(self.ctx.plan.timeout_s, 30.0),
            network_timeout=self.ctx.plan.timeout_s,
        )
        prefix = base.split("://", 1)[1].partition("/")[2]
        self.url_path = ("/" + prefix if prefix else "") + self.path
        # Built once per user: only the request id changes per request.
        self.base_headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            **self.ctx.headers,
        }
        self.id_prefix = request_key(self.ctx.plan.step_id, 0)[:-1]

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
        spec = ctx.prompts[(request_id + state.worker_index) % len(ctx.prompts)]
        body = orjson.dumps(self.build_body(spec))
        headers = dict(self.base_headers)
        headers["X-Request-Id"] = f"{self.id_prefix}{request_id}"  # == request_key(step_id, request_id)
        wait_ns = scheduled - time.monotonic_ns()
        if wait_ns > 0:
            gevent.sleep(wait_ns / 1e9)
        outcome = stream_post(self.client_http, self.url_path, body, headers, ctx.plan.timeout_s)
        if ctx.plan.kind == "concurrency":
            scheduled = outcome.sent_ns  # closed loop: the request is due when it is sent
        result = self.interpret(outcome) if outcome.error_class is None or outcome.splitter.events else None
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
            request_type="POST",
            name=self.path,
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
        self.client_http.close()


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
