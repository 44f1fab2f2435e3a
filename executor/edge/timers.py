"""A sleep that ends when it should: an in-peer sleep job's timer. trio edge code.

`trio.sleep` wakes through the timeout of the event loop's `epoll_wait`,
which Python rounds up to a whole millisecond; inside a busy peer a 20 ms
sleep job ended 0.9 ms late on average (`python -m sim bench speed
--scenario S4`: 100 sleeps in a row on one peer took 1.047 x their sum).
A Linux timerfd armed for the same moment wakes the loop through its
readiness instead, to the microsecond: 1.016 x on the same run.

Only the sleep job uses it. Anything else that waits in the peer (probes,
timeouts, back-offs) is a deadline that a millisecond does not change.

Falls back to `trio.sleep` where there is no timerfd (not Linux, or the
kernel refuses one: out of file descriptors) and on a clock other than the
system's: the tests' virtual clock (`trio.testing.MockClock`) jumps, and a
timerfd would wait in real time.
"""

from __future__ import annotations

import ctypes
import os
import sys

import trio
import trio.testing

_CLOCK_MONOTONIC = 1  # trio's own clock: time.perf_counter()
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def _timerfd(seconds: float) -> int:
    """A timerfd that becomes readable `seconds` from now, or -1."""
    fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        return -1
    whole = int(seconds)
    # it_value 0 would disarm the timer: at least a nanosecond.
    value = _Timespec(whole, max(1, int((seconds - whole) * 1e9)))
    if _libc.timerfd_settime(fd, 0, ctypes.byref(_Itimerspec(_Timespec(0, 0), value)), None) != 0:
        os.close(fd)
        return -1
    return fd


async def sleep_precisely(seconds: float) -> None:
    """`trio.sleep(seconds)` that ends within microseconds of its time, not
    up to a millisecond after it. Cancellable like `trio.sleep`."""
    if seconds <= 0 or _libc is None or isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        await trio.sleep(max(0.0, seconds))
        return
    fd = _timerfd(seconds)
    if fd < 0:
        await trio.sleep(seconds)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
