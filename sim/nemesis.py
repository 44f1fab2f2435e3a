"""The gray-failure nemeses of `python -m sim cluster`: what they need from the
machine, and the small pieces that act on one peer process.

* pause: SIGSTOP / SIGCONT of the peer process (its running jobs go on, as
  they would when a VM or a container is frozen and its children are not);
* slow disk: `sim/slowsync.c`, compiled at run time into the work dir and
  loaded into the chosen peers with LD_PRELOAD; every fsync/fdatasync first
  sleeps `PEERJOBS_SLOWSYNC_MS`;
* wall-clock steps: a per-peer offset file that the harness rewrites
  ("+600", "-600"), read by `sim/wallclock.c` (the default `--clock-tool
  shim`, compiled like slowsync.c; `PEERJOBS_WALL_OFFSET_FILE`) or by
  libfaketime (`--clock-tool libfaketime`, Debian package `libfaketime`, with
  `FAKETIME_DONT_FAKE_MONOTONIC=1`, `FAKETIME_NO_CACHE=1` and
  `FAKETIME_TIMESTAMP_FILE`): the wall clock of that process jumps, its
  monotonic clock does not;
* disk faults (`power-cut`, `disk-full`): every peer's data dir on its own
  faultfs mount (sim/faultfs/), which the harness tells to lose power (with a
  kill -9 of the peer) or to run out of space.

Why the shim is the default: libfaketime 0.9.10 (Debian 12) makes a peer slow
by itself. It wakes timed lock waits late (a Python `Lock.acquire(timeout=)`
released by another thread: up to 60 ms late, 0.3 ms without it; trio's
`to_thread` hand-off, which the peer's committer uses: up to 0.2-2 s late),
so peers under it suspect each other with no clock step at all; and with the
monotonic clock excluded, Python >= 3.11's `time.sleep()` fails with EINVAL
(upstream issue #426: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) is
shifted by the fake offset). Measured in docs/chaos.md.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess

_HERE = os.path.dirname(os.path.abspath(__file__))
SLOWSYNC_SOURCE = os.path.join(_HERE, "slowsync.c")
SLOWSYNC_ENV = "PEERJOBS_SLOWSYNC_MS"
WALLCLOCK_SOURCE = os.path.join(_HERE, "wallclock.c")
WALLCLOCK_ENV = "PEERJOBS_WALL_OFFSET_FILE"
_CC_TIMEOUT_S = 60.0  # compiling 40 lines of C
_FAKETIME_PATTERNS = (
    "/usr/lib/*-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
)


class Unavailable(RuntimeError):
    """A nemesis cannot run on this machine; the message says what to install."""


# ---------------------------------------------------------------------------
# What each mode needs


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def libfaketime() -> str | None:
    """The preload library of libfaketime, or None."""
    override = os.environ.get("PEERJOBS_LIBFAKETIME")
    if override:
        return override if os.path.exists(override) else None
    for pattern in _FAKETIME_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


DISK_MODES = ("power-cut", "disk-full")


def missing(mode: str, clock_tool: str = "shim") -> str | None:
    """Why `mode` cannot run here (with what to install), or None when it can."""
    if mode in DISK_MODES:
        from sim.faultfs import unavailable_reason

        why = unavailable_reason()
        return f"{mode} needs faultfs: {why}" if why else None
    if (mode == "slow-disk" or (mode == "clock-step" and clock_tool == "shim")) and compiler() is None:
        return (f"{mode} needs a C compiler (cc) to build its LD_PRELOAD shim from sim/: "
                "apt-get install -y gcc libc6-dev")
    if mode == "clock-step" and clock_tool == "libfaketime" and libfaketime() is None:
        return ("clock-step needs libfaketime (libfaketime.so.1): apt-get install -y libfaketime "
                "(or set PEERJOBS_LIBFAKETIME to its path)")
    return None


# ---------------------------------------------------------------------------
# Slow disk


def build_shim(workdir: str, source: str) -> str:
    """Compile one of the C shims in sim/ into `workdir`; the path of the
    shared object."""
    cc = compiler()
    if cc is None:
        raise Unavailable(missing("slow-disk"))
    out = os.path.join(workdir, os.path.basename(source)[:-2] + ".so")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", out, source, "-ldl"],
                          capture_output=True, text=True, timeout=_CC_TIMEOUT_S)
    if proc.returncode != 0:
        raise Unavailable(f"could not compile {source}: {proc.stderr.strip()[:500]}")
    return out


def build_slowsync(workdir: str) -> str:
    return build_shim(workdir, SLOWSYNC_SOURCE)


def slowsync_env(library: str, sync_ms: int) -> dict[str, str]:
    return {"LD_PRELOAD": library, SLOWSYNC_ENV: str(int(sync_ms))}


# ---------------------------------------------------------------------------
# Wall clock


def build_wallclock(workdir: str) -> str:
    return build_shim(workdir, WALLCLOCK_SOURCE)


class WallClock:
    """One peer's wall-clock offset file (sim/wallclock.c or libfaketime read
    it). The offset is written whole and renamed into place, so that the peer
    never sees half a line."""

    def __init__(self, workdir: str, name: str) -> None:
        self.path = os.path.join(workdir, f"{name}.faketime")
        self.offset_s = 0
        self.set(0)

    def set(self, offset_s: int) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{offset_s:+d}\n")
        os.replace(tmp, self.path)
        self.offset_s = offset_s

    def env(self, library: str, tool: str = "shim") -> dict[str, str]:
        if tool == "shim":
            return {"LD_PRELOAD": library, WALLCLOCK_ENV: self.path}
        return {"LD_PRELOAD": library, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1",
                "FAKETIME_TIMESTAMP_FILE": self.path}


def next_offset(offset_s: int, step_s: int, coin: float) -> int:
    """The next wall-clock offset: a step of ±step_s (the sign from `coin` in
    [0, 1)), turned back when it would leave [-2 step_s, +2 step_s]."""
    step = step_s if coin < 0.5 else -step_s
    if abs(offset_s + step) > 2 * step_s:
        step = -step
    return offset_s + step


# ---------------------------------------------------------------------------
# Pause


def stop(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGSTOP)
        return True
    except ProcessLookupError:
        return False


def cont(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------
# Disks (faultfs)


def mount_disks(workdir: str, names: list[str], fs_names: str = "dir") -> dict:
    """One faultfs per peer: backing tree <workdir>/<name>.disk, mounted at
    <workdir>/<name>.mnt, its log <workdir>/<name>.faultfs.log. The peer's
    data dir is `data_dir(disk, name)`. On failure, whatever was mounted is
    unmounted again."""
    from sim.faultfs import FaultFS

    disks = {}
    try:
        for name in names:
            disks[name] = FaultFS(os.path.join(workdir, f"{name}.disk"), os.path.join(workdir, f"{name}.mnt"),
                                  names=fs_names, log=os.path.join(workdir, f"{name}.faultfs.log")).start()
    except BaseException:
        unmount_disks(disks)
        raise
    return disks


def data_dir(disk, name: str) -> str:
    return os.path.join(disk.mountpoint, name)


def unmount_disks(disks: dict) -> None:
    """Lift every fault and unmount cleanly (the peers must be stopped first)."""
    from sim.faultfs import FaultFSError

    for disk in disks.values():
        try:
            disk.clear()
        except (OSError, FaultFSError):
            pass  # a dead faultfs: stop() detaches its mount
        disk.stop(flush=True)
