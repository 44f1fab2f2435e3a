"""faultfs: a fault-injecting FUSE filesystem for tests and the chaos harness.

    with FaultFS(backing_dir, mount_dir) as fs:
        ...                       # run a peer with --data mount_dir/d1
        fs.power_cut()            # everything not fsynced is gone
        fs.set_sync_delay_ms(50)  # every fsync takes >= 50 ms
        fs.set_budget_bytes(fs.stats()["used_bytes"] + 1 << 20)   # ENOSPC past that
        fs.fail("fsync", "*/leveldb/*.log")                         # EIO
        fs.clear()

The filesystem runs in its own process (`python -m sim.faultfs mount`), so a
harness can hand `fs.control_path` to any other process, which drives it with
`FaultFSControl(path)` or `python -m sim.faultfs ctl PATH COMMAND...` (or
`nc -U`). The model of a disk, its limits, and the control protocol:
sim/faultfs/model.py, sim/faultfs/mount.py and docs/chaos.md.

pyfuse3 is an optional dependency (`pip install -e '.[faults]'`, plus Debian's
`fuse3`); `unavailable_reason()` says why faultfs cannot run here, or None.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# How long mounting may take before start() gives up (the FUSE process loads
# the backing tree first: a few ms per thousand files).
MOUNT_TIMEOUT_S = 20.0
# How long a clean stop may take (unmount, then the final sync into the
# backing tree) before the process is killed and the mount detached.
STOP_TIMEOUT_S = 20.0
# One control request's reply must come within this (a power cut with many
# files is the slowest: one pass over the nodes).
CONTROL_TIMEOUT_S = 30.0
# The longest reply line read from the control socket.
REPLY_BYTES_MAX = 1 << 20

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FaultFSError(RuntimeError):
    """The filesystem could not be mounted, or a control command failed."""


def unavailable_reason() -> str | None:
    """Why faultfs cannot run on this machine, or None when it can."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return (f"pyfuse3 is not installed ({e}); pip install -e '.[faults]' "
                "after apt-get install fuse3 libfuse3-dev pkg-config")
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is None:
        return "/dev/fuse is not accessible and fusermount3 is not installed (apt-get install fuse3)"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None


class FaultFSControl:
    """A client of a running faultfs's control socket; one connection, one
    request at a time. Usable from any process."""

    def __init__(self, path: str, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def request(self, line: str) -> dict:
        """Send one command line; return the reply's JSON, or raise FaultFSError for `ERR`."""
        if "\n" in line:
            raise ValueError("one command, no newline")
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout_s)
            self._sock.connect(self.path)
            self._buf = b""
        self._sock.sendall(line.encode() + b"\n")
        while b"\n" not in self._buf:
            if len(self._buf) > REPLY_BYTES_MAX:
                self.close()
                raise FaultFSError(f"reply longer than {REPLY_BYTES_MAX} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                self.close()
                raise FaultFSError(f"faultfs closed the control connection after {line!r}")
            self._buf += chunk
        reply, self._buf = self._buf.split(b"\n", 1)
        text = reply.decode(errors="replace")
        if text.startswith("OK "):
            return json.loads(text[3:])
        raise FaultFSError(f"{line!r}: {text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # The commands, by name.
    def power_cut(self) -> dict:
        """Drop every write and name change not made durable by a sync."""
        return self.request("power-cut")

    def set_sync_delay_ms(self, ms: int) -> None:
        self.request(f"sync-delay {int(ms)}")

    def set_budget_bytes(self, n: int | None) -> dict:
        return self.request("budget none" if n is None else f"budget {int(n)}")

    def fail(self, op: str, pattern: str) -> None:
        """EIO for `op` (read, write or fsync) on paths (from the mount root) matching the glob."""
        self.request(f"fail {op} {pattern}")

    def clear(self) -> None:
        self.request("clear")

    def sync(self) -> None:
        self.request("sync")

    def drop_caches(self) -> None:
        """Make the kernel forget every page it cached: a page already read
        (or mapped) is served from the page cache without asking faultfs, so
        an EIO rule for reads only takes effect after this."""
        self.request("drop-caches")

    def stats(self) -> dict:
        return self.request("stats")


try:  # bound here, so that the child only calls it (no import between fork and exec)
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child: SIGTERM (a clean unmount) when the test process dies
    (PR_SET_PDEATHSIG), so that not even a kill -9 of pytest leaves a mount."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)


class FaultFS(FaultFSControl):
    """Mount `backing` at `mountpoint` in a child process; a context manager
    that unmounts and stops it on exit (also when the body raised).

    `names="dir"` (default): a name change is durable only after an fsync of
    its directory (POSIX). `names="any"`: any fsync also makes every earlier
    name change durable (ext4/XFS in practice). `log` is a path for the
    process's stderr (default: inherited)."""

    def __init__(self, backing: str, mountpoint: str, *, names: str = "dir", log: str | None = None,
                 verbose: bool = False) -> None:
        super().__init__("")  # the control socket's path is chosen by start()
        self._tmp: str | None = None
        self.backing = os.path.abspath(backing)
        self.mountpoint = os.path.abspath(mountpoint)
        self.names = names
        self.log = log
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None

    @property
    def control_path(self) -> str:
        """The control socket, for other processes (set by start())."""
        return self.path

    def start(self) -> "FaultFS":
        """Mount; after a stop() this mounts again on what the backing dir
        kept (a reboot after a power cut with stop(flush=False))."""
        reason = unavailable_reason()
        if reason:
            raise FaultFSError(reason)
        if self.proc is not None:
            raise FaultFSError("already started")
        self._tmp = tempfile.mkdtemp(prefix="faultfs-")  # short: UNIX socket paths are at most 107 bytes
        self.path = os.path.join(self._tmp, "control.sock")
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        if os.path.ismount(self.mountpoint):
            raise FaultFSError(f"{self.mountpoint} is already a mount point")
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-m", "sim.faultfs", "mount", self.backing, self.mountpoint,
               "--control", self.path, "--names", self.names, "--ready-fd", str(write_fd)]
        if self.verbose:
            cmd.append("-v")
        stderr = open(self.log, "ab") if self.log else None
        try:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                         stdout=stderr, stderr=stderr, preexec_fn=_die_with_parent)
        finally:
            os.close(write_fd)
            if stderr:
                stderr.close()
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT_S
            got = b""
            while b"\n" not in got:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FaultFSError(f"not mounted within {MOUNT_TIMEOUT_S} s (MOUNT_TIMEOUT_S)")
                ready, _, _ = select.select([read_fd], [], [], left)
                if ready:
                    chunk = os.read(read_fd, 64)
                    if not chunk:
                        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
                        raise FaultFSError(f"faultfs exited with status {code} before mounting{self._log_tail()}")
                    got += chunk
        except BaseException:
            self._kill()
            self.proc = None
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        finally:
            os.close(read_fd)
        return self

    def stop(self, flush: bool = True) -> None:
        """Unmount and end the process. `flush=True` is a clean unmount (all
        data and names become durable in the backing dir); `flush=False` cuts
        the power first. Processes still using the mount should be stopped
        before: the unmount is lazy, so they would go on running on a
        detached filesystem."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    self.request("stop flush" if flush else "stop cut")
                except (OSError, FaultFSError):
                    self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
        finally:
            self.close()
            self._detach()
            self.proc = None
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _log_tail(self, lines: int = 5) -> str:
        if not self.log:
            return " (its stderr went to ours)"
        try:
            with open(self.log, "rb") as f:
                tail = f.read()[-4096:].decode(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return f"; {self.log} ends: " + " | ".join(tail)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._detach()

    def _detach(self) -> None:
        """A faultfs process that died leaves its mount behind ("Transport
        endpoint is not connected"); detach it."""
        if os.path.ismount(self.mountpoint) or _is_dead_mount(self.mountpoint):
            tool = shutil.which("fusermount3") or shutil.which("fusermount")
            if tool:
                subprocess.run([tool, "-u", "-z", self.mountpoint], capture_output=True, timeout=STOP_TIMEOUT_S)
            else:
                subprocess.run(["umount", "-l", self.mountpoint], capture_output=True, timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> "FaultFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_dead_mount(path: str) -> bool:
    try:
        os.stat(path)
        return False
    except OSError as e:
        return e.errno == errno.ENOTCONN  # the FUSE process is gone
    except ValueError:
        return False
