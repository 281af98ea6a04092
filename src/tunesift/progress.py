"""Progress bars, the same for the command line and the Python API.

A progress factory is ``progress(label, total) -> advance(n, total_now=None)``: each long step
(scoring, the DELIFT kernel, embedding) asks for one bar and advances it by the items done.
:func:`progress_bars` yields one drawn by rich on stderr; rich draws it in place on a terminal and
as a live output in a Jupyter notebook (there rich needs ``ipywidgets``, which Jupyter
installations usually have; without it rich warns and draws nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["interactive", "progress_bars"]

Factory = Callable[[str, int], Callable[..., None]]


def interactive() -> bool:
    """True in a Jupyter notebook or when stderr is a terminal: where a bar can be seen."""
    from rich.console import Console

    console = Console(stderr=True)
    return bool(console.is_jupyter or console.is_terminal)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Factory | None]:
    """A rich progress-bar factory on stderr while the block runs, or None when not ``enabled``."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    started = False

    def factory(label: str, total: int) -> Callable[..., None]:
        nonlocal started
        if not started:  # shown from the first bar on: an error before it stays the one line on stderr
            bar.start()
            started = True
        task = bar.add_task(label, total=total)

        def advance(n: int, total_now: int | None = None) -> None:
            if total_now is not None:
                bar.update(task, total=total_now)
            bar.advance(task, n)
        return advance
    try:
        yield factory
    finally:
        if started:
            bar.stop()
