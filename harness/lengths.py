"""Achieved output lengths per cell, and the flag on a cell whose mean differs from the others'.

Why: throughput and TPOT compare servers only if they produced the same amount of text. vLLM
honours ``ignore_eos``; TGI has neither ``ignore_eos`` nor ``min_new_tokens`` (and TGIS-style
servers may stop on EOS too), so a TGI cell can finish 30 % shorter and look faster per request
while doing less work. Every cell's achieved mean is recorded (``CellResult.output_tokens_mean``,
per step ``StepMetrics.output_tokens_mean`` beside the requested mean), and a cell is flagged
when its mean differs by more than ``TOLERANCE`` from the reference: the **median of all
cells' means** (with two cells, the other cell's mean). The median, not the mean, so that one
short cell among several equal ones is the only one flagged (a mean including it would move
towards it and flag its neighbours too); two groups of equal cells more than 5 % apart are all
flagged, since which group is "right" is not the harness's to say.
"""

from __future__ import annotations

from harness.results import CellResult, RunSummary

TOLERANCE = 0.05


def cell_output_mean(cell: CellResult) -> float | None:
    """Mean achieved output tokens over the cell's measured steps (pooled: weighted by ok requests)."""
    pairs = [(s.output_tokens_mean, s.requests_ok) for s in cell.steps if s.output_tokens_mean is not None]
    weight = sum(n for _, n in pairs)
    if not pairs or weight == 0:
        return None
    return sum(mean * n for mean, n in pairs) / weight


def cell_requested_mean(cell: CellResult) -> float | None:
    pairs = [(s.requested_output_tokens_mean, s.requests_ok) for s in cell.steps]
    known = [(m, n) for m, n in pairs if m is not None]
    weight = sum(n for _, n in known)
    return sum(m * n for m, n in known) / weight if known and weight else None


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def length_flags(cells: list[CellResult], tolerance: float = TOLERANCE) -> dict[str, str]:
    """cell id -> why its achieved mean output length is out of line with the other cells'."""
    means = {c.cell_id: m for c in cells if (m := cell_output_mean(c)) is not None}
    if len(means) < 2:
        return {}
    median = _median(list(means.values()))
    flags: dict[str, str] = {}
    for cell_id, mean in means.items():
        if len(means) == 2:
            reference = next(m for other, m in means.items() if other != cell_id)
            what = "the other cell's mean"
        else:
            reference, what = median, "the median of all cells' means"
        if reference <= 0:
            continue
        diff = (mean - reference) / reference
        if abs(diff) > tolerance:
            flags[cell_id] = (
                f"mean output {mean:.1f} tokens is {abs(diff):.1%} {'below' if diff < 0 else 'above'} "
                f"{what} ({reference:.1f}); per-request throughput and latency are not comparable "
                f"(more than {tolerance:.0%} apart)"
            )
    return flags


def apply_length_flags(summary: RunSummary) -> None:
    """Set every cell's ``output_tokens_mean`` and ``output_length_flag`` from its steps."""
    flags = length_flags(summary.cells)
    for cell in summary.cells:
        cell.output_tokens_mean = cell_output_mean(cell)
        cell.output_length_flag = flags.get(cell.cell_id)
