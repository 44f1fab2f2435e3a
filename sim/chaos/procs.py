"""Peer processes: one `peerjobs node` that the harness spawns, kill -9s,
SIGSTOPs and restarts on the same port and data dir, and a cluster of them
that `close()` stops whatever happened; and talking to a peer through the one
client library (executor/client/).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import trio

from executor.client import AsyncClient, Reply
from sim import nemesis
from sim.bench import free_port

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONN_ERRORS = (OSError, ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError)
_WINDOW = 48  # requests in flight on one connection (the peer allows 64)


def _say(*parts) -> None:
    print("cluster:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Processes


try:  # bound here, so that the child only calls it (no import between fork and exec)
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _prctl = None

_live_clusters: list[ProcessCluster] = []


def _die_with_parent() -> None:
    """In the child between fork and exec: SIGKILL me when the harness dies
    (PR_SET_PDEATHSIG), so that not even a kill -9 of the harness leaves peers."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


class PeerProc:
    """One `peerjobs node`: started, SIGKILLed and restarted on the same port
    and data dir. Logs append to <workdir>/<name>.log across lives."""

    def __init__(self, workdir: str, name: str, port: int, slots: int, join: list[str], verbose: bool, *,
                 host: str = "127.0.0.1", prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None, data: str | None = None) -> None:
        """`prefix` goes before the command line (e.g. `ip netns exec NS`, which
        execs, so the pid is still the peer's); `env` is added to the
        environment; `extra_args` go after the peer's options; `data`: the
        data dir (default <workdir>/<name>; a faultfs mount for the disk nemeses)."""
        self.name, self.port, self.slots, self.host = name, port, slots, host
        self.addr = f"{host}:{port}"
        self.prefix, self.env = list(prefix or []), env
        self.data = data or os.path.join(workdir, name)
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.cmd = [sys.executable, "-m", "executor.client.cli", "node", "--data", self.data, "--listen", self.addr,
                    "--name", name, "--slots", str(slots)]
        for seed in join:
            self.cmd += ["--join", seed]
        if verbose:
            self.cmd.append("-v")
        self.cmd += list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.lives = 0

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.prefix + self.cmd, cwd=_ROOT, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent,
                                         env=None if self.env is None else {**os.environ, **self.env})
        self.lives += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> bool:
        """SIGSTOP the peer process (not its jobs); False if it is not running."""
        return self.running() and nemesis.stop(self.proc.pid)

    def resume(self) -> None:
        """SIGCONT; harmless on a process that is not stopped."""
        if self.running():
            nemesis.cont(self.proc.pid)

    def kill9(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def wait_listening(self, timeout_s: float = 20.0) -> bool:
        with trio.move_on_after(timeout_s):
            while True:
                if not self.running():
                    return False
                try:
                    with trio.fail_after(1.0):
                        stream = await trio.open_tcp_stream(self.host, self.port)
                    await stream.aclose()
                    return True
                except (OSError, trio.TooSlowError):
                    await trio.sleep(0.02)
        return False


class ProcessCluster:
    """N peers; `close()` stops every one of them whatever happened."""

    def __init__(self, n: int, slots: int, workdir: str, verbose: bool = False,
                 peers: list[PeerProc] | None = None, *, env: dict[str, dict[str, str]] | None = None,
                 data: dict[str, str] | None = None) -> None:
        """`peers`: use these (already built) instead of n on loopback ports;
        `env`: extra environment of the built peers, by name (the nemeses'
        LD_PRELOAD shims); `data`: data dirs by name (faultfs mounts)."""
        if peers is None:
            env = env or {}
            ports = [free_port() for _ in range(n)]
            first = f"127.0.0.1:{ports[0]}"
            data = data or {}
            peers = [PeerProc(workdir, f"p{i + 1}", port, slots, [] if i == 0 else [first], verbose,
                              env=env.get(f"p{i + 1}"), data=data.get(f"p{i + 1}"))
                     for i, port in enumerate(ports)]
        self.peers = peers
        self.by_name = {p.name: p for p in self.peers}
        _live_clusters.append(self)

    async def start(self) -> None:
        first, rest = self.peers[0], self.peers[1:]
        first.spawn()
        if not await first.wait_listening():
            raise RuntimeError(f"{first.name} did not start (see {first.log_path})")
        for p in rest:
            p.spawn()
        for p in rest:
            if not await p.wait_listening():
                raise RuntimeError(f"{p.name} did not start (see {p.log_path})")

    def close(self) -> None:
        if self in _live_clusters:
            _live_clusters.remove(self)
        for p in self.peers:  # a SIGSTOPped peer would sit on its SIGTERM until the SIGKILL
            p.resume()
        for p in self.peers:  # SIGTERM all first, then wait: stops in parallel
            if p.running():
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for p in self.peers:
            if p.proc is None:
                continue
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()

    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.peers if p.proc is not None]


# ---------------------------------------------------------------------------
# Talking to peers: through the one client library (executor/client/)


def _as_tuple(reply: Reply, verb: str) -> tuple:
    """A reply as plain data: ("ok", text) / ("err", code, message); RESULT
    adds stdout; LIST and PEERS give ("ok", [lines])."""
    if not reply.ok:
        return ("err", reply.code, reply.message)
    if verb in ("LIST", "PEERS", "STATS"):
        return ("ok", reply.lines)
    if verb == "RESULT":
        return ("ok", reply.text, reply.stdout)
    return ("ok", reply.text)


async def _open(addr: str, timeout_s: float = 2.0) -> AsyncClient:
    return await AsyncClient.open(addr, timeout_s=timeout_s)


async def request_many(addr: str, lines: list[str], *, timeout_s: float = 60.0) -> list:
    """Pipeline `lines` on one connection, `_WINDOW` outstanding; the replies
    in order. Raises on a broken connection or timeout."""
    client = await _open(addr)
    try:
        replies = await client.request_many(lines, window=_WINDOW, timeout_s=timeout_s)
    finally:
        await client.aclose()
    return [_as_tuple(r, line.split(" ", 1)[0]) for r, line in zip(replies, lines)]



def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, bare or wrapped in the exception group trio raises it in when
    it lands inside a nursery."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None)


