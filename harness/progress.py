"""What the user sees while a step runs: a live ``rich`` display on a terminal, a plain line in CI.

Why: a step can run for minutes and the run's own lines come only between
steps. The Locust master (or single process) writes ``progress.json`` once a
second (``harness.load.live``); ``run_step`` calls the tick this module hands
out about ten times a second while it waits for Locust, and the tick reads
the file (at most every ``READ_EVERY_S``) and shows: the cell and step and
where they stand in the run (cell i/N, step j/M, ETA for the run), requests
done against the target (or elapsed against the duration), running TTFT and
TPOT p50s, errors by class and the harness-health flag.

Three modes: ``rich`` (a terminal: a transient live panel that the step's
result line replaces), ``plain`` (no terminal: one line every ``every_s``,
10 s by default) and ``off`` (``--quiet``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.load.live import progress_path, read_progress

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from harness.load.plan import LoadPlan
    from harness.results import Dist, StepMetrics

Mode = Literal["rich", "plain", "off"]
READ_EVERY_S = 0.5
PLAIN_EVERY_S = 10.0


def step_line(cell_id: str, m: StepMetrics) -> str:
    """The line printed when a step ends: its measured counts and medians."""

    def p(d: Dist | None, q: str) -> str:
        return f"{getattr(d, q):.1f}" if d is not None else "-"

    return (
        f"[{cell_id}] {m.step_id}: {m.requests_ok}/{m.requests_total} ok, "
        f"TTFT p50 {p(m.ttft_ms, 'p50')} ms, TPOT p50 {p(m.tpot_ms, 'p50')} ms, "
        f"{m.output_tok_s:.1f} out tok/s, errors {m.error_rate:.1%}"
    )


def duration_text(seconds: float | None) -> str:
    """``1h02m``, ``3m20s``, ``45s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass
class StepView:
    """One running step as the display knows it: its plan, its place in the run, the latest snapshot."""

    plan: LoadPlan
    cell: tuple[int, int]  # (index, count)
    step: tuple[int, int]
    started: float
    data: dict[str, Any] | None = None

    @property
    def started_load(self) -> bool:
        """Whether a Locust process has reported yet (before that, Locust is still starting)."""
        return bool(self.data and self.data.get("reporting"))

    def elapsed(self) -> float | None:
        """Seconds since the first admission of the longest-running Locust process; None before one reports."""
        value = (self.data or {}).get("elapsed_s")
        return float(value) if value is not None else None

    def fraction(self) -> float | None:
        """How far the step is: requests done over the target, or elapsed over warm-up + duration."""
        plan, data = self.plan, self.data or {}
        if plan.requests:
            return min(1.0, int(data.get("done", 0)) / plan.requests)
        elapsed = self.elapsed()
        if plan.duration_s and elapsed is not None:
            return min(1.0, elapsed / (plan.warmup_s + plan.duration_s))
        return None

    def progress_text(self, now: float) -> str:
        data = self.data or {}
        if not self.started_load:
            return f"starting Locust ({now - self.started:.0f} s)"
        if self.plan.requests:
            text = f"{data.get('done', 0)}/{self.plan.requests} requests"
        else:
            total = self.plan.warmup_s + (self.plan.duration_s or 0)
            text = f"{self.elapsed() or 0:.0f}/{total:g} s, {data.get('done', 0)} requests"
        if data.get("warmup"):
            text += f" (+{data['warmup']} warm-up)"
        return text

    def errors_text(self) -> str:
        errors = (self.data or {}).get("errors") or {}
        return ", ".join(f"{name} {count}" for name, count in errors.items()) or "none"

    def health_text(self) -> str:
        data = self.data or {}
        if data.get("limited"):
            return "LIMITED (" + "; ".join(data.get("reasons") or []) + ")"
        return "ok" if self.started_load else "-"

    def where(self) -> str:
        return f"cell {self.cell[0] + 1}/{self.cell[1]}, step {self.step[0] + 1}/{self.step[1]}"


@dataclass
class LiveProgress:
    """Hands out a tick per step (``step``) and shows the step's progress in the chosen mode.

    The run ETA assumes every remaining step costs what the steps so far cost on
    average, server launches included (the time since the first step began,
    over the steps done plus the current step's fraction).
    """

    mode: Mode = "off"
    console: Console | None = None
    every_s: float = PLAIN_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _first: float | None = None
    _steps_done: int = 0

    @classmethod
    def for_console(
        cls, console: Console, *, quiet: bool = False, every_s: float | None = None
    ) -> LiveProgress:
        """Rich on a terminal, plain lines otherwise, nothing with ``quiet``."""
        if quiet:
            return cls("off")
        mode: Mode = "rich" if console.is_terminal else "plain"
        return cls(mode, console, every_s if every_s is not None else PLAIN_EVERY_S)

    def eta(self, view: StepView, now: float) -> float | None:
        """Seconds left in the run, or None before anything is known."""
        fraction = view.fraction() or 0.0
        units = self._steps_done + fraction
        if self._first is None or units <= 0.02:
            return None
        per_step = (now - self._first) / units
        (ci, cn), (si, sn) = view.cell, view.step
        remaining = (cn - ci - 1) * sn + (sn - si - 1) + (1.0 - fraction)
        return per_step * remaining

    def line(self, view: StepView, now: float) -> str:
        """The plain progress line (the rich panel shows the same fields)."""
        data = view.data or {}
        return (
            f"[{view.plan.cell_id}] {view.plan.step_id} running ({view.where()}): {view.progress_text(now)}, "
            f"TTFT p50 {_ms(data.get('ttft_p50_ms'))} ms, TPOT p50 {_ms(data.get('tpot_p50_ms'))} ms, "
            f"errors {view.errors_text()}, harness {view.health_text()}, run ETA {duration_text(self.eta(view, now))}"
        )

    def panel(self, view: StepView, now: float) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        data = view.data or {}
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column()
        title = Text(
            f"[{view.plan.cell_id}] {view.plan.step_id} running: {view.plan.kind} {view.plan.target:g}"
        )
        grid.add_row("run", f"{view.where()}, ETA {duration_text(self.eta(view, now))}")
        fraction = view.fraction()
        bar = ProgressBar(total=1.0, completed=fraction or 0.0, width=40, pulse=fraction is None)
        grid.add_row("progress", bar)
        grid.add_row("", Text(view.progress_text(now)))
        grid.add_row(
            "latency",
            f"TTFT p50 {_ms(data.get('ttft_p50_ms'))} ms, TPOT p50 {_ms(data.get('tpot_p50_ms'))} ms (running)",
        )
        grid.add_row("errors", Text(view.errors_text(), style="red" if data.get("errors") else ""))
        health = view.health_text()
        grid.add_row("harness", Text(health, style="bold yellow" if data.get("limited") else "green"))
        return Group(title, grid)

    @contextmanager
    def step(
        self, plan: LoadPlan, cell: tuple[int, int], step: tuple[int, int]
    ) -> Iterator[Callable[[], None]]:
        """Show ``plan``'s step while the body runs; yields the tick ``run_step`` calls as it waits."""
        now = self.clock()
        if self._first is None:
            self._first = now
        view = StepView(plan, cell, step, started=now)
        path: Path = progress_path(plan.records_path)
        marks = {"read": float("-inf"), "plain": now}
        live = None
        if self.mode == "rich":
            from rich.live import Live

            live = Live(
                self.panel(view, now),
                console=self.console,
                transient=True,
                auto_refresh=False,
                redirect_stdout=False,
            )
            live.start(refresh=True)

        def tick() -> None:
            t = self.clock()
            if self.mode == "off" or t - marks["read"] < READ_EVERY_S:
                return
            marks["read"] = t
            view.data = read_progress(path) or view.data
            if live is not None:
                live.update(self.panel(view, t), refresh=True)
            elif self.mode == "plain" and t - marks["plain"] >= self.every_s:
                marks["plain"] = t
                if self.console is not None:
                    self.console.print(self.line(view, t), highlight=False, markup=False, soft_wrap=True)

        try:
            yield tick
            self._steps_done += 1
        finally:
            if live is not None:
                live.stop()
