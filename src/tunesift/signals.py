"""SIGINT and SIGTERM handlers saved, replaced for a block and restored: the one rule the CLI's
interrupt line, the output folders' uninterruptible swaps and Ray's start-up share."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: the signals a user stops a run with
STOPS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def handlers_kept(handler: Callable | None = None) -> Iterator[bool]:
    """SIGINT's and SIGTERM's handlers as they were when the block began, restored when it ends
    (undoing whatever the block installed: ``ray.init`` sets its own SIGTERM handler and never
    takes it back); ``handler`` (if given) serves both for the block's length. Python runs signal
    handlers in the main thread only, and only there can they be set: elsewhere the block runs
    as is. Yields whether the handlers are kept (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    old = {s: signal.getsignal(s) for s in STOPS}
    try:
        if handler is not None:
            for s in STOPS:
                signal.signal(s, handler)
        yield True
    finally:
        _restore(list(old.items()))


def _restore(handlers: list) -> None:
    """Reinstall ``handlers`` ((signal, handler) pairs), each in the ``finally`` of the one before:
    a signal that arrives once the first is back and raises there (KeyboardInterrupt) still finds
    the rest restored. None: a handler not set from Python, which Python cannot reinstall."""
    if not handlers:
        return
    (s, h), rest = handlers[0], handlers[1:]
    try:
        signal.signal(s, h if h is not None else signal.SIG_DFL)
    finally:
        _restore(rest)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held until the block ends, then raised (the first one caught) under the
    handlers of before: a block of renames and the note of what they moved happen together.
    Outside the main thread the block runs as is."""
    caught: list[int] = []
    try:
        with handlers_kept(lambda n, _f: caught.append(n)):
            yield
    finally:
        if caught:
            signal.raise_signal(caught[0])
