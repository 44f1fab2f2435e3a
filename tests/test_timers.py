"""The sleep job's timer (executor/edge/timers.py): never early, cancellable,
no file descriptor left behind, and the tests' virtual clock still works.
How much closer to its time it ends is a benchmark's question
(`python -m sim bench speed --scenario S4`), not a test's."""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing

from executor.edge import timers

pytestmark = pytest.mark.skipif(timers._libc is None, reason="no timerfd: not Linux")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_precise_sleep_never_ends_before_its_time():
    for seconds in (0.001, 0.0105, 0.02):
        start = time.monotonic()
        await timers.sleep_precisely(seconds)
        assert time.monotonic() - start >= seconds


async def test_a_cancelled_precise_sleep_ends_at_once_and_closes_its_timer():
    before = _open_fds()
    for _ in range(50):
        with trio.move_on_after(0.001) as scope:
            await timers.sleep_precisely(3600)
        assert scope.cancelled_caught
    assert _open_fds() == before


async def test_nothing_to_sleep_returns_at_once():
    before = _open_fds()
    with trio.fail_after(5):
        await timers.sleep_precisely(0)
        await timers.sleep_precisely(-1.5)
    assert _open_fds() == before


def test_on_the_virtual_clock_a_precise_sleep_is_a_virtual_one():
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> float:
        start = trio.current_time()
        await timers.sleep_precisely(30)  # a timerfd would wait 30 s of real time
        return trio.current_time() - start

    real = time.monotonic()
    assert trio.run(main, clock=clock) == 30
    assert time.monotonic() - real < 15


async def test_without_a_timerfd_the_sleep_falls_back_to_trios(monkeypatch):
    """Out of file descriptors (timerfd_create fails): the sleep job still
    sleeps its time, through trio's own timer, and nothing is left open."""
    monkeypatch.setattr(timers, "_timerfd", lambda seconds: -1)
    before = _open_fds()
    start = time.monotonic()
    await timers.sleep_precisely(0.01)
    assert time.monotonic() - start >= 0.01
    assert _open_fds() == before
