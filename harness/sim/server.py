"""The sim server: routing, per-request plans and faults, lifecycle.

Why one object owns all state: counters, RNGs and the write log belong to a
server instance (no module globals), so tests can run several sims in one
process and a restart starts clean. Lengths use one seeded RNG drawn in
arrival order, faults another, so runs with the same seed and request order
are reproducible.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import orjson

from harness import __version__
from harness.sim import caikit_api, openai_api, tgi_api
from harness.sim.engine import ContextTooLong, EngineLoop
from harness.sim.engine_http import HttpSink
from harness.sim.faults import HTTP_FAULTS, Fault
from harness.sim.generation import BadRequest, GenSpec, Plan, Rejected, StreamFormat
from harness.sim.httpconn import Connection, HttpRequest, ParseQueue
from harness.sim.metrics import SimCounters, render
from harness.sim.options import SimOptions
from harness.sim.stream import StreamJob
from harness.sim.timing import chunk_offsets, chunk_sizes, natural_length
from harness.sim.writelog import WriteLog, clean_request_id

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions")
TGI_PATHS = ("/generate", "/generate_stream", "/")
# POST path -> which API's parser, errors and stream format serve it.
GENERATE_ROUTES = {
    **dict.fromkeys(OPENAI_PATHS, "openai"),
    **dict.fromkeys(TGI_PATHS, "tgi"),
    **dict.fromkeys(caikit_api.PATHS, "caikit"),
}
ERROR_BODIES = {"openai": openai_api.error_body, "tgi": tgi_api.error_body, "caikit": caikit_api.error_body}
FLUSH_S = 0.25


class SimServer:
    """Serves the sim's HTTP API until ``stop`` (SIGTERM/SIGINT, or an ``exit_after`` fault)."""

    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.counters = SimCounters()
        self.length_rng = random.Random(opts.seed)
        self.jitter_rng = random.Random(opts.seed + 1)
        self.log = WriteLog(opts.write_log)
        self.connections: set[Connection] = set()
        self.seq = 0
        self.finished = 0
        self.started_ns = time.monotonic_ns()
        self.exit_code = 0
        self.in_flight = 0  # admitted generation requests not yet finished (TGI's concurrency limit)
        self._stop: asyncio.Event | None = None
        self.engine = EngineLoop(opts.engine, self.counters, opts.time_scale) if opts.engine else None

    # lifecycle ---------------------------------------------------------------
    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        parse_queue = ParseQueue()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, 0)
        server = await loop.create_server(
            lambda: Connection(self, self.connections, parse_queue),
            self.opts.host,
            self.opts.port,
            backlog=self.opts.backlog,
            reuse_address=True,
        )
        port = server.sockets[0].getsockname()[1]
        print(f"tokenbench sim listening on http://{self.opts.host}:{port} mode={self.opts.mode}", flush=True)
        if self.engine is not None:
            print(self._engine_banner(), flush=True)
        flusher = loop.create_task(self._flush_loop())
        engine_task = loop.create_task(self.engine.run()) if self.engine is not None else None
        grpc_server = None
        if self.opts.grpc_port is not None:
            from harness.sim.grpc_server import start_grpc  # grpc loads only when asked for

            grpc_server, grpc_port = await start_grpc(self, self.opts.host, self.opts.grpc_port)
            print(f"tokenbench sim serving TGIS and Caikit gRPC on {self.opts.host}:{grpc_port}", flush=True)
        try:
            await self._stop.wait()
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=None)
            flusher.cancel()
            if engine_task is not None:
                engine_task.cancel()
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await asyncio.sleep(0)  # let connection_lost log the streams cut short
            self.log.close()
        return self.exit_code

    def _engine_banner(self) -> str:
        assert self.engine is not None
        cfg, mem = self.engine.cfg, self.engine.plan
        gb = 1e9
        return (
            f"engine (simulated): {cfg.model.key} on {cfg.gpu.key} quantization={cfg.quantization} "
            f"kv_cache_dtype={cfg.kv_cache_dtype} max_num_seqs={cfg.max_num_seqs} "
            f"max_num_batched_tokens={cfg.max_num_batched_tokens} time_scale={self.opts.time_scale}; "
            f"VRAM weights {mem.weights / gb:.2f} GB, overhead {mem.overhead / gb:.2f} GB, "
            f"KV cache {mem.kv_cache / gb:.2f} GB = {mem.num_blocks} blocks x {mem.block_size} tokens"
        )

    def stop(self, code: int = 0) -> None:
        self.exit_code = code
        if self._stop is not None:
            self._stop.set()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.log.flush()

    # routing -----------------------------------------------------------------
    def handle(self, conn: Connection, req: HttpRequest) -> None:
        path, method = req.path, req.method
        if method == "POST" and path in GENERATE_ROUTES:
            self._generate(conn, req, GENERATE_ROUTES[path])
        elif method not in ("GET", "HEAD"):
            conn.respond(405 if path in GENERATE_ROUTES else 404, b'{"detail":"Not Found"}')
        elif path == "/health":
            up = (time.monotonic_ns() - self.started_ns) / 1e9 >= self.opts.faults.slow_start_s
            conn.respond(200 if up else 503, b"" if up else b'{"error":"starting"}')
        elif path == "/metrics":
            text = render(self.counters, api=self.opts.api, mode=self.opts.mode, model=self.opts.model)
            conn.respond(200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models" and not self.opts.no_openai_models:
            conn.respond(200, openai_api.models_body(self.opts.model, self.opts.max_model_len))
        elif path == "/version":
            conn.respond(200, orjson.dumps({"version": f"{__version__}+sim.{self.opts.mode}"}))
        elif path in caikit_api.INFO_PATHS:
            conn.respond(200, caikit_api.info_body(path, self.opts.model))
        elif path == "/info":
            conn.respond(
                200,
                tgi_api.info_body(
                    self.opts.model,
                    self.opts.max_model_len,
                    max_concurrent_requests=self.opts.max_concurrent_requests,
                    max_input_tokens=self.opts.max_input_tokens,
                    version=self.opts.tgi_version,
                ),
            )
        else:
            conn.respond(404, b'{"detail":"Not Found"}')

    # generation --------------------------------------------------------------
    def _parse(self, req: HttpRequest, api: str) -> GenSpec:
        try:
            body: Any = orjson.loads(req.body)
        except orjson.JSONDecodeError as err:
            if api == "caikit":  # FastAPI's request validation, before Caikit's own handler
                raise Rejected(str(err), 422, caikit_api.error_body(422, f"Invalid JSON: {err}")) from None
            raise BadRequest(f"body: not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise BadRequest("body: expected a JSON object")
        if api == "openai":
            return openai_api.parse_openai(req.path, body, self.opts.model, self.opts.default_max_tokens)
        if api == "caikit":
            return caikit_api.parse_caikit(req.path, body, self.opts.model)
        return tgi_api.parse_tgi(req.path, body, self.opts.model)

    @staticmethod
    def _format(api: str, spec: GenSpec, plan: Plan, path: str) -> StreamFormat:
        if api == "openai":
            return openai_api.OpenAIFormat(spec, plan)
        if api == "caikit":
            return caikit_api.CaikitFormat(spec, plan)
        return tgi_api.TgiFormat(spec, plan, path == "/")

    def _plan(self, spec: GenSpec) -> Plan:
        if self.opts.no_ignore_eos:  # TGI: no ignore_eos, no min_tokens; the "model" stops where it does
            n = natural_length(self.length_rng, spec.max_tokens, 0)
            return Plan(n, "length" if n >= spec.max_tokens else "stop")
        if spec.ignore_eos:
            return Plan(spec.max_tokens, "length")
        n = natural_length(self.length_rng, spec.max_tokens, spec.min_tokens)
        return Plan(n, "length" if n >= spec.max_tokens else "stop")

    def _generate(self, conn: Connection, req: HttpRequest, api: str) -> None:
        errors = ERROR_BODIES[api]
        try:
            spec = self._parse(req, api)
        except Rejected as err:
            conn.respond(err.status, err.body, err.content_type)
            return
        except BadRequest as err:
            conn.respond(400, errors(400, str(err)))
            return
        refusal = self._router_refusal(spec)
        if refusal is not None:
            status, message = refusal
            conn.respond(status, errors(status, message))
            return
        self.seq += 1
        self.counters.requests_total += 1
        rid = clean_request_id(req.headers.get("x-request-id") or f"sim-{self.seq}")
        fault = self.opts.faults.pick(self.seq)
        self.log.arrival(rid, req.arrival_ns, spec.prompt_tokens, spec.api)
        if fault is not None and self._early_fault(conn, fault, rid, errors):
            return
        self.in_flight += 1
        plan = self._plan(spec)
        fmt = self._format(api, spec, plan, req.path)
        if self.engine is not None:
            self._generate_engine(conn, spec, plan, fmt, rid, fault, errors)
            return
        timing = self.opts.timing
        sizes = chunk_sizes(plan.n_tokens, timing.tokens_per_chunk if spec.stream else plan.n_tokens)
        stall_at = len(sizes) // 2 if fault is not None and fault.kind == "stall" else None
        offsets = chunk_offsets(
            timing, len(sizes), self.jitter_rng, stall_at, int((fault.arg if fault else 0) * 1e9)
        )
        if not spec.stream:
            # The whole answer is due when the last token would have been.
            full = chunk_offsets(
                timing, len(chunk_sizes(plan.n_tokens, timing.tokens_per_chunk)), self.jitter_rng, None, 0
            )
            offsets = [full[-1] + (int(fault.arg * 1e9) if stall_at is not None and fault else 0)]
        due = [req.arrival_ns + o for o in offsets]
        self.counters.running += 1
        self.counters.prompt_tokens_total += spec.prompt_tokens
        note = fault.kind if fault is not None else plan.finish_reason

        def on_end(outcome: str, tokens: int) -> None:
            self._ended(outcome, tokens, plan.finish_reason)

        if spec.stream:
            conn.start_stream(fmt.content_type)
            job = StreamJob(
                conn, fmt, sizes, due, rid, self.log, fault.kind if fault else None, on_end, ok_note=note
            )
            job.start()
        else:
            self._respond_later(conn, fmt, due[0], rid, plan, fault, on_end)

    def _generate_engine(
        self,
        conn: Connection,
        spec: GenSpec,
        plan: Plan,
        fmt: StreamFormat,
        rid: str,
        fault: Fault | None,
        errors: Any,
    ) -> None:
        """Hand the request to the modelled engine; its sink writes tokens as iterations end."""
        assert self.engine is not None
        try:
            self.engine.check(spec.prompt_tokens, spec.max_tokens)
        except ContextTooLong as err:
            self.in_flight -= 1
            conn.respond(400, errors(400, str(err)))
            self.log.end(rid, 0, 0, time.monotonic_ns(), "context_too_long")
            self.counters.failure_total += 1
            self._count_finished()
            return
        self.counters.prompt_tokens_total += spec.prompt_tokens

        def on_end(outcome: str, tokens: int) -> None:
            self._settle(outcome, tokens, plan.finish_reason)

        sink = HttpSink(
            conn,
            fmt,
            spec.stream,
            plan.n_tokens,
            rid,
            self.log,
            fault.kind if fault else None,
            on_end,
            self.engine,
            plan.finish_reason,
        )
        sink.start(spec.prompt_tokens)

    def _early_fault(self, conn: Connection, fault: Fault, rid: str, errors: Any) -> bool:
        """Faults that end a request before any token; True when one fired."""
        now = time.monotonic_ns()
        if fault.kind in HTTP_FAULTS:
            status = HTTP_FAULTS[fault.kind]
            conn.respond(status, errors(status, f"simulated fault {fault.kind}"))
        elif fault.kind == "reset_before_headers":
            conn.reset()
        else:
            return False
        self.log.end(rid, 0, 0, now, fault.kind)
        self.counters.failure_total += 1
        self._count_finished()
        return True

    def _respond_later(
        self,
        conn: Connection,
        fmt: StreamFormat,
        due_ns: int,
        rid: str,
        plan: Plan,
        fault: Fault | None,
        on_end: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        state = {"gone": False}

        def gone() -> None:
            state["gone"] = True
            handle.cancel()
            self.log.gone(rid, 0, 0, time.monotonic_ns())
            on_end("client_gone", 0)

        def fire() -> None:
            if state["gone"]:
                return
            if due_ns - time.monotonic_ns() > 100_000:
                nonlocal handle
                handle = loop.call_later((due_ns - time.monotonic_ns()) / 1e9, fire)
                return
            conn.on_lost.remove(gone)
            kind = fault.kind if fault else None
            if kind == "disconnect_mid_stream":
                conn.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
                )
                conn.keep_alive = False
                conn.close()
            elif kind == "malformed_sse":
                conn.respond(200, b'{"id": <<not json')
            else:
                conn.respond(200, fmt.body())
            t = time.monotonic_ns()
            if kind not in ("disconnect_mid_stream", "malformed_sse"):
                self.log.chunk(rid, 0, plan.n_tokens, t)
            self.log.end(rid, 1, plan.n_tokens, t, kind or plan.finish_reason)
            on_end(kind or "ok", plan.n_tokens)

        handle = loop.call_later(max(0, due_ns - time.monotonic_ns()) / 1e9, fire)
        conn.on_lost.append(gone)

    def _ended(self, outcome: str, tokens: int, finish_reason: str) -> None:
        self.counters.running -= 1
        self._settle(outcome, tokens, finish_reason)

    def _router_refusal(self, spec: GenSpec) -> tuple[int, str] | None:
        """TGI's router checks before a request is queued: input length (422), concurrency (429)."""
        opts = self.opts
        if opts.max_input_tokens is not None:
            if spec.prompt_tokens > opts.max_input_tokens:
                return 422, (
                    f"Input validation error: `inputs` must have less than {opts.max_input_tokens} tokens. "
                    f"Given: {spec.prompt_tokens}"
                )
            if spec.prompt_tokens + spec.max_tokens > opts.max_model_len:
                return 422, (
                    f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                    f"{opts.max_model_len}. Given: {spec.prompt_tokens} `inputs` tokens and "
                    f"{spec.max_tokens} `max_new_tokens`"
                )
        if opts.max_concurrent_requests is not None and self.in_flight >= opts.max_concurrent_requests:
            return 429, "Model is overloaded"
        return None

    def _settle(self, outcome: str, tokens: int, finish_reason: str) -> None:
        """Count a finished request (engine mode's running gauge is the engine's, not ours)."""
        self.in_flight -= 1
        c = self.counters
        c.generation_tokens_total += tokens
        if outcome in ("ok", "length", "stop", "stall"):
            c.success_total[finish_reason] = c.success_total.get(finish_reason, 0) + 1
        else:
            c.failure_total += 1
        self._count_finished()

    def _count_finished(self) -> None:
        self.finished += 1
        limit = self.opts.faults.exit_after
        if limit is not None and self.finished >= limit:
            asyncio.get_running_loop().call_soon(self.stop, 3)


def run(opts: SimOptions) -> int:
    """Run the server on uvloop when available; returns the process exit code."""
    if opts.uvloop:
        try:
            import uvloop

            return uvloop.run(SimServer(opts).serve())
        except ImportError:
            pass
    return asyncio.run(SimServer(opts).serve())
