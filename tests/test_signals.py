"""Stopping long runs (:mod:`sap_rl.signals`): real signals sent to this process."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sap_rl.signals import sigterm_as_interrupt, stop_between_steps


def _signal_self(signum: int) -> None:
    """Send ``signum`` to this process; Python runs its handler before the next bytecode."""
    os.kill(os.getpid(), signum)


@pytest.fixture
def handlers() -> Iterator[None]:
    """Leave SIGINT and SIGTERM as they were, whatever the test does."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_sigterm_raises_keyboard_interrupt_inside_the_block(handlers: None) -> None:
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        _signal_self(signal.SIGTERM)


def test_a_second_ctrl_c_interrupts_at_once(handlers: None) -> None:
    with stop_between_steps() as stop_requested:
        assert not stop_requested()
        _signal_self(signal.SIGINT)
        assert stop_requested()  # the loop goes on to the end of its step
        with pytest.raises(KeyboardInterrupt):  # a step that takes too long is cut short
            _signal_self(signal.SIGINT)


def test_sigterm_never_cuts_a_step_short(handlers: None) -> None:
    # A scheduler's SIGTERM to the whole job, then the parent's to its workers.
    with stop_between_steps() as stop_requested:
        for _ in range(3):
            _signal_self(signal.SIGTERM)
        assert stop_requested()


def test_the_callers_handlers_are_back_after_the_block(handlers: None) -> None:
    def caller(signum: int, frame: Any) -> None:
        raise RuntimeError("the caller's handler")

    signal.signal(signal.SIGTERM, caller)
    with stop_between_steps():
        assert signal.getsignal(signal.SIGTERM) is not caller
    assert signal.getsignal(signal.SIGTERM) is caller
    with pytest.raises(RuntimeError, match="caller's handler"):
        _signal_self(signal.SIGTERM)


def test_an_ignored_sigint_stays_ignored(handlers: None) -> None:
    # A worker process ignores Ctrl-C: its parent stops it with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stop_between_steps() as stop_requested:
        _signal_self(signal.SIGINT)
        assert not stop_requested()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_outside_the_main_thread_nothing_is_set(handlers: None) -> None:
    seen: list[tuple[bool, Any]] = []

    def run() -> None:
        with stop_between_steps() as stop_requested:
            seen.append((stop_requested(), signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [(False, before)]
