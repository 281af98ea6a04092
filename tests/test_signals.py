"""The one rule for SIGINT/SIGTERM handlers: saved, replaced for a block, restored."""

import signal
import threading

import pytest

from tunesift.signals import STOPS, handlers_kept, signals_held


@pytest.fixture
def own_handlers():
    """A distinct handler per signal for the test's length (the suite's own restored after)."""
    before = {s: signal.getsignal(s) for s in STOPS}
    mine = {s: (lambda n, f, s=s: None) for s in STOPS}
    for s, h in mine.items():
        signal.signal(s, h)
    yield mine
    for s, h in before.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def test_handlers_kept_installs_for_the_block_and_restores_what_the_block_changed(own_handlers):
    seen = []

    def handler(n, _f):
        seen.append(n)

    with handlers_kept(handler) as kept:
        assert kept is True
        assert all(signal.getsignal(s) is handler for s in STOPS)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what ray.init does with its own handler
        signal.raise_signal(signal.SIGINT)
    assert seen == [signal.SIGINT]
    assert {s: signal.getsignal(s) for s in STOPS} == own_handlers


def test_handlers_kept_restores_after_an_exception(own_handlers):
    with pytest.raises(RuntimeError), handlers_kept(signal.SIG_IGN):
        raise RuntimeError("boom")
    assert {s: signal.getsignal(s) for s in STOPS} == own_handlers


def test_handlers_kept_outside_the_main_thread_leaves_handlers_alone(own_handlers):
    result = {}

    def work():
        with handlers_kept(signal.SIG_IGN) as kept:
            result["kept"] = kept
            result["during"] = {s: signal.getsignal(s) for s in STOPS}

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result == {"kept": False, "during": own_handlers}


def test_signals_held_defers_the_first_signal_to_the_blocks_end():
    order = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                signal.raise_signal(signal.SIGINT)
                order.append("block ran on")  # the interrupt waited
            order.append("not reached")
        assert order == ["block ran on"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_signals_held_raises_a_held_signal_even_when_the_block_fails():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            with signals_held():
                signal.raise_signal(signal.SIGINT)
                raise OSError("disk full")
        assert isinstance(info.value.__context__, OSError)  # the failure is chained, not lost
    finally:
        signal.signal(signal.SIGINT, previous)
