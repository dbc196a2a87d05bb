"""Progress display: rich bars per stage (records, tokens/s, ETA), or nothing."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StageProgress:
    """What the runner reports to; the base class shows nothing (--quiet, --json)."""

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, name: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def tokens(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class RichProgress(StageProgress):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = None
        self._tokens = 0
        self._t0 = 0.0

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def start(self, name: str, total: int | None) -> None:
        self._tokens, self._t0 = 0, time.perf_counter()
        self._task = self._progress.add_task(name, total=total, rate="")

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def tokens(self, n: int) -> None:
        self._tokens += n
        dt = max(time.perf_counter() - self._t0, 1e-6)
        self._progress.update(self._task, rate=f"{self._tokens} tok, {self._tokens / dt:.0f} tok/s")

    def finish(self) -> None:
        task = self._progress.tasks[-1]
        if task.total is None:
            self._progress.update(self._task, total=task.completed)

    def log(self, message: str) -> None:
        self._progress.console.print(message)
