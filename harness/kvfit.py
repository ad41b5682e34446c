"""Pre-flight KV-fit estimate: does a cell's batch setting fit the KV cache its GPU can hold?

Why at ``validate``: on a 24 GB card, ``max_num_seqs: 128`` with 1,280-token requests asks for
about 160k tokens of KV cache while Mistral-7B in bf16 leaves room for about 40k. The server
starts anyway and the "128" cell silently measures a batch of ~30 with a queue behind it, so a
sweep over batch settings compares nothing. Saying so before a 15-minute launch is cheaper.

What it computes, per cell of a server with ``gpu:`` set:

* the demand: ``max_seqs × (mean prompt + mean output tokens)`` of the workload, where
  ``max_seqs`` is the backend's batch setting (``BackendSpec.kv_fit``: vLLM's
  ``max_num_seqs``, TGI's ``max_batch_size``); a cell that does not set one is not checked;
* the capacity: the KV tokens that the engine model (``harness.hardware.memory.kv_budget``,
  the same arithmetic as the simulator's engine mode) predicts for that GPU profile, model
  profile (matched from the model id, ``harness/hardware/data/models.yaml``), weight format,
  KV dtype and memory fraction, capped by a KV-limiting setting where the backend has one.

It is an estimate (real engines differ by a few GB of workspace, CUDA graphs and block
rounding), so it warns and never fails; a model no profile matches gets a note saying no
estimate was made. A dataset workload has no declared prompt length, so its prompts count 0.
"""

from __future__ import annotations

from harness.backends.registry import get_spec
from harness.hardware.errors import HardwareError
from harness.hardware.memory import kv_budget
from harness.hardware.profiles import get_gpu, get_model, match_model
from harness.matrix import Cell
from harness.scenario import Scenario, Server
from harness.workload import LengthDist

GB = 1e9
FORMAT_LABELS = {"none": "bf16", "fp8": "8-bit", "awq": "4-bit AWQ", "gptq": "4-bit GPTQ"}


def mean_length(dist: LengthDist | None) -> float:
    """The expected length of a workload distribution (clamping ignored: an estimate)."""
    if dist is None:
        return 0.0
    if dist.dist == "fixed":
        return float(dist.value or 0)
    if dist.dist == "uniform":
        return ((dist.min or 0) + (dist.max or 0)) / 2
    mean = float(dist.mean or 0)
    return min(max(mean, dist.min or mean), dist.max or mean)


def model_profile(server: Server) -> str | None:
    """The model profile of a server: matched from its model, served name or tokenizer."""
    for name in (server.model, server.served_model_name, server.tokenizer):
        if name and (key := match_model(name)) is not None:
            return key
    return None


def cell_warning(cell: Cell, prompt: float, output: float) -> str | None:
    """The KV-fit warning for one cell, or None when it fits or cannot be estimated silently."""
    server = cell.server
    if server.gpu is None:
        return None
    inputs = get_spec(server.backend).kv_fit(dict(cell.settings), server)
    if inputs is None or inputs.max_seqs is None:
        return None
    where = f"cell '{cell.cell_id}'"
    key = model_profile(server)
    if key is None:
        return (
            f"{where}: kv-fit: model {server.model!r} matches no model profile "
            "(harness/hardware/data/models.yaml); no estimate"
        )
    gpu, model = get_gpu(server.gpu), get_model(key)
    try:
        sized = kv_budget(
            gpu, model, quantization=inputs.quantization, kv_cache_dtype=inputs.kv_cache_dtype,
            memory_fraction=inputs.memory_fraction, batched_tokens=inputs.batched_tokens,
            max_seqs=inputs.max_seqs,
        )  # fmt: skip
    except HardwareError as err:
        return f"{where}: kv-fit: {err}"
    what = (
        f"{key} ({FORMAT_LABELS.get(inputs.quantization, inputs.quantization)} weights "
        f"{sized.weights / GB:.1f} GB) on {gpu.key} "
        f"(memory fraction {inputs.memory_fraction:.2f})"
    )
    if sized.kv_tokens == 0:
        return f"{where}: kv-fit: {what} leaves no room for a KV cache; the server will not start"
    capacity, source = sized.kv_tokens, f"the KV cache the engine model predicts for {what}"
    if inputs.kv_token_cap is not None and inputs.kv_token_cap < capacity:
        capacity, source = inputs.kv_token_cap, f"settings.{inputs.cap_setting} {inputs.kv_token_cap}"
    per_seq = prompt + output
    demand = inputs.max_seqs * per_seq
    if demand <= capacity:
        return None
    fits = int(capacity // per_seq) if per_seq > 0 else 0
    return (
        f"{where}: kv-fit: settings.{inputs.seqs_setting} {inputs.max_seqs} x ({prompt:.0f} prompt + "
        f"{output:.0f} output tokens, the workload's means) = {demand:,.0f} tokens exceeds {source}: "
        f"{capacity:,} tokens; about {fits} sequences fit at once, so this batch setting is not reachable"
    )


def kv_fit_warnings(scenario: Scenario, cells: list[Cell]) -> list[str]:
    """One line per cell whose batch setting the KV-fit estimate says cannot be reached."""
    w = scenario.workload
    prompt, output = mean_length(w.prompt_tokens), mean_length(w.output_tokens)
    lines = [cell_warning(cell, prompt, output) for cell in cells]
    return list(dict.fromkeys(line for line in lines if line))
