"""Progress display: one bar per stage in input records, with requests, tokens/s and ETA.

The runner reports whole shards (`advance_records` after each one); LLM stages also
report every finished request as the engine returns it (`response`, wired through
`StageContext.generate`), so a stage whose shard takes a minute moves while it runs
instead of sitting at `0/2` and jumping (issue #6, item 9). Inside a shard, a request
counts for `1 / requests-per-record` records, learnt from the stage's finished
shards (1 until one has finished); the shard's exact count replaces the estimate
when it ends. The ETA comes from the records finished in this attempt only: shards
already done before a resume do not make the stage look fast.

`StageProgress` does the counting and shows nothing (`--quiet`, `--json`);
`RichProgress` draws it with rich. Subclasses draw by overriding `render`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from smolforge.engines.base import Response


@dataclass
class StageState:
    """Counts of the stage being run, as a display sees them."""

    name: str
    total: int | None
    unit: str = "records"  # "records", or "shards" for the old shard-counting calls
    finished: int = 0  # records (or shards) whose shard is written
    resumed: int = 0  # of those, done before this attempt
    partial: float = 0.0  # estimate for the shard in flight, from its finished requests
    requests: int = 0  # LLM requests answered (cache hits included)
    cached: int = 0  # of those, answered by the cache
    tokens: int = 0  # completion tokens generated (not cached)
    t0: float = 0.0

    @property
    def completed(self) -> float:
        return self.finished + self.partial

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at this attempt's rate; None until something has finished."""
        done = self.completed - self.resumed
        if self.total is None or done <= 0:
            return None
        return max(self.total - self.completed, 0.0) * self.elapsed / done


def resumed_message(done: Sequence[tuple[str, int]], next_stage: str | None) -> str:
    """`resuming: combine, generate done (24 records); continuing at judge`."""
    names = ", ".join(name for name, _ in done)
    records = done[-1][1] if done else 0
    if next_stage is None:
        return f"resuming: {names} done ({records} records); every stage is done, writing the output"
    return f"resuming: {names} done ({records} records); continuing at {next_stage}"


class StageProgress:
    """What the runner and `StageContext.generate` report to. Counts; shows nothing.

    Runner calls, per stage: `start_records(name, records_in)`, then after each
    shard `advance_records(n)` (`resumed=True` for a shard done before this
    attempt), then `finish()`; once per run, `resumed(done, next_stage)` when
    stages were already done. The context calls `response(resp)` per LLM response.
    The old shard-counting `start(name, shards)` / `advance(1)` / `tokens(n)` still
    work (the bar then counts shards and requests only move the rate).
    """

    def __init__(self) -> None:
        self.state: StageState | None = None
        self._lock = threading.Lock()
        self._shard_requests = 0  # requests answered in the shard in flight
        self._rate_requests = self._rate_records = 0  # over this attempt's finished shards

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass

    # -- what the runner calls

    def start_records(self, name: str, total: int | None) -> None:
        """A stage begins; `total` is its input records (None: not known yet)."""
        self._begin(StageState(name, total, "records"))

    def advance_records(self, n: int, *, resumed: bool = False) -> None:
        """A shard of `n` input records is written (`resumed`: it was done already)."""
        with self._lock:
            s = self._current()
            s.finished += n
            if resumed:
                s.resumed += n
            elif self._shard_requests:
                self._rate_requests += self._shard_requests
                self._rate_records += n
            s.partial, self._shard_requests = 0.0, 0
        self.render()

    def finish(self) -> None:
        with self._lock:
            s = self._current()
            s.partial = 0.0
            if s.total is None:
                s.total = s.finished
        self.render()

    def resumed(self, done: Sequence[tuple[str, int]], next_stage: str | None) -> None:
        """Stages already done (name, records out) before this attempt, in order."""
        if done:
            self.log(resumed_message(done, next_stage))

    def log(self, message: str) -> None:
        pass

    # -- what StageContext.generate calls

    def response(self, resp: Response) -> None:
        """One LLM request is answered (fresh, cached or failed)."""
        with self._lock:
            s = self._current()
            s.requests += 1
            self._shard_requests += 1
            if resp.cached:
                s.cached += 1
            else:
                s.tokens += resp.completion_tokens
            if s.unit == "records":
                per_record = self._rate_requests / self._rate_records if self._rate_records else 1.0
                left = float("inf") if s.total is None else s.total - s.finished
                s.partial = min(self._shard_requests / per_record, max(left, 0))
        self.render()

    # -- the old shard-counting calls

    def start(self, name: str, total: int | None) -> None:
        self._begin(StageState(name, total, "shards"))

    def advance(self, n: int) -> None:
        with self._lock:
            self._current().finished += n
        self.render()

    def tokens(self, n: int) -> None:
        with self._lock:
            self._current().tokens += n
        self.render()

    # -- drawing

    def render(self) -> None:
        """Show `self.state`; called after every change."""

    def _begin(self, state: StageState) -> None:
        state.t0 = time.perf_counter()
        with self._lock:
            self.state = state
            self._shard_requests = 0
            self._rate_requests = self._rate_records = 0
        self.render()

    def _current(self) -> StageState:
        if self.state is None:  # a report before any stage started: count it anyway
            self.state = StageState("", None, t0=time.perf_counter())
        return self.state


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def describe_rate(s: StageState) -> str:
    if not s.requests and not s.tokens:
        return ""
    cached = f" ({s.cached} cached)" if s.cached else ""
    return f"{s.requests} req{cached}, {s.tokens} tok, {s.tokens_per_s:.0f} tok/s"


class RichProgress(StageProgress):
    """One rich bar per stage: records in, requests, tokens, tokens/s, elapsed, ETA."""

    def __init__(self, console: Console | None = None):
        super().__init__()
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self._task = None
        self._drawn: StageState | None = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def render(self) -> None:
        s = self.state
        if s is None:
            return
        if s is not self._drawn:
            self._task = self._progress.add_task(s.name, total=s.total, unit=s.unit, rate="", eta="")
            self._drawn = s
        self._progress.update(
            self._task, total=s.total, completed=s.completed, rate=describe_rate(s),
            eta=format_eta(s.eta),
        )

    def log(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False)
