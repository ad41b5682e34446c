"""The sim's command line: one parser shared by ``python -m harness.sim`` and ``tokenbench sim``.

Why argparse and not typer here: the sim must start in well under a second
(tests start dozens), and it is launched as a subprocess by the harness, so
it imports as little as possible.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from harness.sim.engine_options import add_engine_arguments, engine_config
from harness.sim.faults import ALL_FAULTS, NEEDS_ARG, FaultError, FaultPlan
from harness.sim.roofline import EngineConfig
from harness.sim.timing import MS, ExactTiming

DEFAULT_MAX_MODEL_LEN = 32768
EXACT_ONLY_FAULTS = ("stall",)


@dataclass(slots=True)
class SimOptions:
    host: str
    port: int
    mode: str
    api: str
    model: str
    timing: ExactTiming
    faults: FaultPlan
    write_log: Path | None
    seed: int
    default_max_tokens: int
    max_model_len: int
    backlog: int
    uvloop: bool
    engine: EngineConfig | None = None
    time_scale: float = 1.0
    grpc_port: int | None = None
    no_openai_models: bool = False
    # TGI's router limits and identity (the fake TGI launcher in tests maps its flags onto these).
    max_concurrent_requests: int | None = None
    max_input_tokens: int | None = None
    no_ignore_eos: bool = False
    tgi_version: str = "3.3.7"


class _HelpFormatter(argparse.HelpFormatter):
    """Help with the default after each option that has one worth showing (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] or default == ""
        if nothing or default is argparse.SUPPRESS or "default" in text or action.required:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenbench sim",
        description="A simulated LLM server: exact, known timings or a modelled GPU engine "
        "(OpenAI, TGI and Caikit HTTP APIs; TGIS and Caikit gRPC). A test double for the harness: "
        "its numbers are never a real server's.",
        epilog="Examples: tokenbench sim --port 8000 --ttft-ms 50 --itl-ms 10; "
        "tokenbench sim --port 8000 --mode engine --gpu a10g-24gb --model mistralai/Mistral-7B-Instruct-v0.3",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port", type=int, required=True, help="HTTP port to listen on (required; 0: any free port)"
    )
    p.add_argument(
        "--mode",
        choices=["exact", "engine"],
        default="exact",
        help="exact: fixed timings from --ttft-ms/--itl-ms; engine: a modelled GPU engine (batching, KV cache)",
    )
    p.add_argument(
        "--api",
        choices=["openai", "tgi"],
        default="openai",
        help="which metric names /metrics uses (and, in engine mode, whose scheduler is modelled); "
        "both APIs are always served",
    )
    p.add_argument("--model", default="sim-model", help="the model name the sim pretends to serve")
    p.add_argument("--ttft-ms", type=float, default=100.0, help="exact mode: time to the first token, ms")
    p.add_argument("--itl-ms", type=float, default=10.0, help="exact mode: time between chunks, ms")
    p.add_argument("--tokens-per-chunk", type=int, default=1, help="tokens in each streamed chunk")
    p.add_argument(
        "--jitter-ms", type=float, default=0.0, help="seeded uniform [0, J) ms added to each chunk's due time"
    )
    p.add_argument("--stall-every", type=int, default=0, help="stall before every Nth chunk (0: never)")
    p.add_argument("--stall-ms", type=float, default=0.0, help="length of each --stall-every stall, ms")
    p.add_argument(
        "--write-log", type=Path, default=None, help="CSV of every chunk's write time (the ground truth)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of output lengths, jitter and drawn faults")
    p.add_argument(
        "--default-max-tokens", type=int, default=16, help="output tokens when a request sets no maximum"
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help=f"context length, prompt + output (default {DEFAULT_MAX_MODEL_LEN}; "
        "in engine mode the model profile's)",
    )
    p.add_argument(
        "--backlog", type=int, default=4096, help="listen backlog: connections waiting to be accepted"
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND",
        help="fault kind to draw with --fault-rate (repeatable): "
        + ", ".join(f for f in ALL_FAULTS if f not in NEEDS_ARG)
        + ", stall:S (an S-second pause mid-stream); or a process fault, slow_start:S / exit_after:N",
    )
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="probability that a request gets one of the --fault kinds",
    )
    p.add_argument(
        "--fault-schedule",
        default="",
        metavar="KIND@N,...",
        help="faults on given requests, 1-based over generation requests (e.g. http_500@3,stall:2@7)",
    )
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop instead of uvloop")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve gRPC on this port (0: any): TGIS GenerationService, Caikit NlpService, health",
    )
    p.add_argument(
        "--no-openai-models",
        action="store_true",
        help="answer GET /v1/models with 404, like a TGI, TGIS or Caikit server (readiness tests)",
    )
    t = p.add_argument_group("TGI router behaviour (what the fake TGI launcher in tests maps onto)")
    t.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=None,
        help="answer 429 'Model is overloaded' above this many requests in flight, as TGI's router does",
    )
    t.add_argument(
        "--max-input-tokens",
        type=int,
        default=None,
        help="answer 422 for prompts above this (and prompt + max tokens above --max-model-len), as TGI does",
    )
    t.add_argument(
        "--no-ignore-eos",
        action="store_true",
        help="the server has no ignore_eos/min_tokens (TGI): every answer ends at a seeded natural EOS",
    )
    t.add_argument("--tgi-version", default="3.3.7", help="the version /info reports")
    add_engine_arguments(p)
    return p


def parse_options(argv: list[str]) -> SimOptions:
    """Parse and validate; exits with a usage error naming the bad option."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        timing = ExactTiming(
            ttft_ns=int(a.ttft_ms * MS),
            itl_ns=int(a.itl_ms * MS),
            tokens_per_chunk=a.tokens_per_chunk,
            jitter_ns=int(a.jitter_ms * MS),
            stall_every=a.stall_every,
            stall_ns=int(a.stall_ms * MS),
        )
        faults = FaultPlan.build(a.fault_rate, a.fault, a.fault_schedule, a.seed)
        engine = engine_config(a)
    except (ValueError, FaultError) as err:
        parser.error(str(err))
    if engine is not None:
        used = {f.kind for f in (*faults.kinds, *faults.schedule.values())}
        for kind in sorted(used & set(EXACT_ONLY_FAULTS)):
            parser.error(f"--fault {kind}: exact mode only (an engine's stalls come from its batch)")
    if a.max_model_len is not None and a.max_model_len < 1:
        parser.error(f"--max-model-len {a.max_model_len}: must be >= 1")
    if a.grpc_port is not None and not 0 <= a.grpc_port <= 65535:
        parser.error(f"--grpc-port {a.grpc_port}: out of range")
    if not 0 <= a.port <= 65535:
        parser.error(f"--port {a.port}: out of range")
    for flag in ("max_concurrent_requests", "max_input_tokens"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(a, flag)}: must be >= 1")
    if a.default_max_tokens < 1:
        parser.error(f"--default-max-tokens {a.default_max_tokens}: must be >= 1")
    return SimOptions(
        host=a.host,
        port=a.port,
        mode=a.mode,
        api=a.api,
        model=a.model,
        timing=timing,
        faults=faults,
        write_log=a.write_log,
        seed=a.seed,
        default_max_tokens=a.default_max_tokens,
        max_model_len=engine.context_len if engine else (a.max_model_len or DEFAULT_MAX_MODEL_LEN),
        backlog=a.backlog,
        uvloop=not a.no_uvloop,
        engine=engine,
        time_scale=a.time_scale,
        grpc_port=a.grpc_port,
        no_openai_models=a.no_openai_models,
        max_concurrent_requests=a.max_concurrent_requests,
        max_input_tokens=a.max_input_tokens,
        no_ignore_eos=a.no_ignore_eos,
        tgi_version=a.tgi_version,
    )
