"""One cell's measurement on a server that is up: stream usage, then its steps with telemetry around them.

Why apart from ``run``: ``run`` owns the order of the whole run and what
happens when a server or a cell fails (launch, failure, teardown, the summary
on disk); this is what measuring a cell *is*, once its server is healthy and
the same for a cell that shares a launch: decide once whether the server takes
OpenAI's ``stream_options``, start the telemetry sampler, then for each step
write its prompts and ``LoadPlan``, drive it (``harness.load.runner``) between
the server clock's edges, compute its metrics and rewrite ``summary.json``,
and finally the SLO search and the cell's memory summary. A failed step
raises ``StepFailed`` out of here; ``run`` decides what that fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from harness.assets import tokenizer_path
from harness.backends.base import ServerHandle
from harness.backends.process import ProcessRegistry
from harness.backends.registry import get_spec
from harness.matrix import Cell, Step
from harness.progress import LiveProgress, step_line
from harness.records import read_records_frame
from harness.results import CellResult, RunSummary, StepMetrics
from harness.rundir import RunDir
from harness.runsecrets import Redactor
from harness.scenario import Scenario, Server
from harness.slo import Slo

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness.protocols.base import Endpoint


def exceeds_cap(metrics: StepMetrics, cap: int | None) -> bool:
    """A step over the server's concurrency cap: a closed-loop target above it, or an open-loop step
    whose measured mean in-flight count is above it (its arrivals queue in the server's pool)."""
    if cap is None:
        return False
    if metrics.kind == "concurrency":
        return metrics.target > cap
    return metrics.mean_in_flight is not None and metrics.mean_in_flight > cap


def endpoint_of(server: Server, handle: ServerHandle) -> Endpoint:
    """Where a started server listens, with its TLS trust and auth, as the protocol probes need it."""
    from harness.protocols.base import Endpoint

    return Endpoint(
        base_url=handle.base_url,
        model=handle.served_model,
        grpc_target=handle.grpc_target,
        grpc_tls=server.tls is not None,
        tls=server.tls_options(),
        headers=handle.headers,
    )


def prompt_count(scenario: Scenario, step: Step) -> int:
    """Enough distinct prompts that a step rarely reuses one (reuse would hit the prefix cache)."""
    w = scenario.workload
    if w.requests is not None:
        expected = w.requests + (step.target * w.warmup_s if step.kind == "rate" else 4 * step.target)
    elif step.kind == "rate":
        expected = step.target * (w.warmup_s + (w.duration_s or 0))
    else:
        expected = step.target * (w.warmup_s + (w.duration_s or 0)) * 4
    return int(min(20_000, max(64, math.ceil(expected * 1.5))))


@dataclass
class CellRun:
    """Measures a launch group's cells on their server, for ``Run._run_group`` (one per group).

    ``scenario`` is the resolved one (``assets.resolve_scenario``: model and tokenizer
    paths absolute); ``cell_ids`` are all the run's cells, in order, for the progress display.
    """

    scenario: Scenario
    run_dir: RunDir
    summary: RunSummary
    steps: list[Step]
    cell_ids: list[str]
    registry: ProcessRegistry
    secrets: Redactor
    progress: Callable[[str], None]
    live: LiveProgress

    def measure(self, cell: Cell, result: CellResult, handle: ServerHandle, launched_for: Cell) -> None:
        """Measure ``cell`` on ``handle``, the server launched for ``launched_for`` (often the same cell)."""
        result.command = self.secrets.command(handle.command)
        result.env = self.secrets.env(handle.env)
        result.version = handle.version
        result.server_info = dict(handle.server_info)
        result.launch_s = handle.launch_s
        result.simulated = handle.simulated
        result.simulated_band = handle.simulated_band
        if launched_for is not cell:
            result.server_shared_with = launched_for.cell_id
            self.progress(f"[{cell.cell_id}] the server of {launched_for.cell_id}, now over {cell.protocol}")
        self._decide_stream_usage(cell, result, handle)
        self._run_steps(cell, result, handle, self.run_dir.cell_dir(cell.cell_id))
        result.status = "ok"

    def _decide_stream_usage(self, cell: Cell, result: CellResult, handle: ServerHandle) -> None:
        """Once per cell, before load: does this server take OpenAI's ``stream_options``? (Recorded.)"""
        from harness.protocols.readiness import decide_stream_usage
        from harness.protocols.registry import get_protocol

        server = cell.server
        result.protocol = cell.protocol
        result.tls_insecure_skip_verify = server.tls is not None and server.tls.insecure_skip_verify
        result.stream_usage, result.stream_usage_reason = decide_stream_usage(
            get_protocol(cell.protocol), server.stream_usage, endpoint_of(server, handle)
        )
        if get_protocol(cell.protocol).stream_usage:
            sent = "sent" if result.stream_usage else "not sent"
            self.progress(f"[{cell.cell_id}] stream_options {sent}: {result.stream_usage_reason}")

    def _run_steps(self, cell: Cell, result: CellResult, handle: ServerHandle, cell_dir: Path) -> None:
        from harness.metrics import compute_step_metrics
        from harness.search import run_search
        from harness.stepcheck import check_step
        from harness.telemetry.config import DEFAULT_SAMPLES_PER_STEP, scrape_interval
        from harness.telemetry.dcgm import RemoteGpuQuery
        from harness.telemetry.sampler import TelemetrySampler, read_timeseries, write_timeseries
        from harness.telemetry.server_clock import DEFAULT_NETWORK_MS, step_clock
        from harness.telemetry.summary import measurement_note, memory_summary

        scenario = self.scenario
        # This host's GPUs and processes describe only a server launched here; others' GPUs are the cluster's.
        local = get_spec(cell.server.backend).launches_locally
        telemetry = scenario.telemetry
        remote = None if local else RemoteGpuQuery.for_server(telemetry, handle.pod, handle.namespace)
        sampler = TelemetrySampler(
            cell_id=cell.cell_id,
            server_pid=handle.pid,
            processes=handle.trees(),
            metrics_url=handle.metrics_url,
            headers=handle.headers,
            local=local,
            remote=remote,
            scrape_interval_s=scrape_interval(
                [scenario.workload.duration_s],
                telemetry.prometheus_samples_per_step if telemetry else DEFAULT_SAMPLES_PER_STEP,
            ),
        )
        sampler.start()
        rows: list[dict] = []
        done = {m.step_id for m in result.steps}

        histograms = get_spec(cell.server.backend).server_histograms  # the server's own clock
        network_ms = telemetry.server_clock_network_ms if telemetry else DEFAULT_NETWORK_MS

        def measure(step: Step, index: int, slo: Slo) -> tuple[pd.DataFrame, StepMetrics]:
            sampler.set_step(step.step_id)
            clock = step_clock(handle.metrics_url, histograms, handle.headers)
            try:
                if clock is not None:
                    clock.begin()  # the step's edges: no request in flight (server_clock.py)
                records_path, health, wall_s = self._load_step(
                    cell, step, index, handle, bool(result.stream_usage)
                )
                if clock is not None:
                    clock.end()
            finally:
                sampler.set_step(None)
            frame = read_records_frame(records_path)  # chunk lists stay Arrow (vectorised metrics)
            metrics = compute_step_metrics(frame, step=step, slo=slo, duration_s=None, health=health)
            metrics.server_clock = clock.result(frame, network_ms) if clock is not None else None
            metrics.exceeds_concurrency_cap = exceeds_cap(metrics, result.concurrency_cap)
            result.steps.append(metrics)
            self.run_dir.write_summary(self.summary)
            self.progress(step_line(cell.cell_id, metrics))
            return frame, metrics

        try:
            for index, step in enumerate(self.steps):
                if step.step_id in done:
                    continue  # finished in an earlier attempt (resume)
                check_step(*measure(step, index, scenario.slo), scenario.workload.abort_error_rate)
            if scenario.workload.steps.search is not None:  # the loop's logic: harness/search.py
                run_search(scenario, result, measure, len(self.steps), self.progress, cell.cell_id)
        finally:
            series = cell_dir / "timeseries.parquet"
            earlier = read_timeseries(series) if series.exists() else []  # a resumed cell's first attempt
            rows = earlier + self.secrets.data(sampler.stop())  # server-made metric names, labels
            write_timeseries(series, rows)
            steps = [m.step_id for m in result.steps]  # fixed steps and search probes
            result.memory = memory_summary(rows, steps, measured_here=local, remote=sampler.remote_status)
            note = measurement_note(result.memory)
            if note:
                self.progress(f"[{cell.cell_id}] memory: {note}")

    def _load_step(
        self, cell: Cell, step: Step, index: int, handle: ServerHandle, stream_usage: bool
    ) -> tuple[Path, dict, float]:
        from harness.backends.watch import ServerWatch
        from harness.load.plan import LoadPlan, distributed_fields
        from harness.load.prompts import build_prompts, load_dataset, write_prompts
        from harness.load.runner import run_step
        from harness.protocols.registry import get_protocol

        scenario = self.scenario
        w = scenario.workload
        tls = cell.server.tls_options()
        step_dir = self.run_dir.step_dir(cell.cell_id, step.step_id)
        seed = scenario.seed * 1_000_000 + cell.repeat * 1_000 + index
        tok = tokenizer_path(cell.server)
        style = get_protocol(cell.protocol).prompt_style
        count = prompt_count(scenario, step)
        if w.dataset is not None:
            prompts = load_dataset(w.dataset, w.output_tokens, count, seed, style, tokenizer_path=tok)
        else:
            assert w.prompt_tokens is not None  # the scenario model requires one of the two
            prompts = build_prompts(tok, w.prompt_tokens, w.output_tokens, count, seed, style)
        prompts_path = step_dir / "prompts.jsonl"
        write_prompts(prompts_path, prompts)
        plan = LoadPlan(
            run_id=self.summary.run_id,
            cell_id=cell.cell_id,
            step_id=step.step_id,
            api=cell.protocol,
            base_url=handle.base_url,
            grpc_target=handle.grpc_target,
            grpc_tls=cell.server.tls is not None,
            tls_ca_bundle=tls.ca_bundle,
            tls_server_name=tls.server_name,
            tls_insecure_skip_verify=tls.insecure_skip_verify,
            stream_usage=stream_usage,
            model=handle.served_model,
            kind=step.kind,
            target=step.target,
            warmup_s=w.warmup_s,
            duration_s=w.duration_s,
            requests=w.requests,
            max_concurrency=w.max_concurrency,
            timeout_s=w.timeout_s,
            max_response_bytes=w.max_response_bytes,
            max_response_chunks=w.max_response_chunks,
            connections=w.connections,
            processes=w.processes,
            seed=seed,
            ignore_eos=w.ignore_eos,
            temperature=w.temperature,
            prompts_path=str(prompts_path),
            records_path=str(step_dir / "records.parquet"),
            health_path=str(step_dir / "health.json"),
            simulated=get_spec(cell.server.backend).simulated,
            tokenizer_path=str(tok) if tok else None,
            **distributed_fields(w.distributed),
        )
        self.progress(f"[{cell.cell_id}] step {step.step_id}: {step.kind} {step.target:g}")
        watch, ids = ServerWatch(pids=handle.trees()), self.cell_ids
        with self.live.step(plan, (ids.index(cell.cell_id), len(ids)), (index, len(self.steps))) as tick:
            outcome = run_step(
                plan,
                step_dir,
                headers=handle.headers,
                registry=self.registry,
                watch=watch,
                secrets=self.secrets,
                on_wait=tick,
            )
        return Path(outcome.records_path), outcome.health, outcome.wall_s
