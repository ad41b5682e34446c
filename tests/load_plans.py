"""Building LoadPlans for load-layer tests: prompts written, sim-friendly defaults (the sim's tokenizer), any field overridable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.fidelity.steps import write_sim_tokenizer
from harness.load.plan import LoadPlan
from harness.load.prompts import build_prompts, write_prompts
from harness.protocols.registry import get_protocol
from harness.workload import LengthDist


def sim_plan(
    tmp_path: Path,
    *,
    api: str = "completions",
    base_url: str = "http://127.0.0.1:1",
    prompt_tokens: int = 24,
    output_tokens: int = 16,
    **fields: Any,
) -> LoadPlan:
    """A plan over 20 approximate-length prompts; by default 4 closed-loop users, no warm-up."""
    prompts = tmp_path / "prompts.jsonl"
    style = get_protocol(api).prompt_style
    specs = build_prompts(
        None, LengthDist(value=prompt_tokens), LengthDist(value=output_tokens), 20, 0, style
    )
    write_prompts(prompts, specs)
    plan: dict[str, Any] = dict(
        run_id="run1",
        cell_id="sim" if api in ("completions", "chat") else api,
        step_id="s",
        api=api,
        base_url=base_url,
        model="sim-model",
        kind="concurrency",
        target=4,
        prompts_path=str(prompts),
        records_path=str(tmp_path / "records.parquet"),
        health_path=str(tmp_path / "health.json"),
        timeout_s=10.0,
        simulated=True,
        # The client's own output count is the streamed text retokenized: give it the sim's tokenizer.
        tokenizer_path=str(write_sim_tokenizer(tmp_path / "sim-tokenizer.json")),
    )
    plan.update(fields)
    return LoadPlan(**plan)
