"""Shared test helpers: a sans-IO harness around PeerCore, and real peer processes."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from executor.config import Config
from executor.core import ClientRequest, PeerCore, Reply, StartJob, Tick, carry_out
from storage import layout
from storage.store import MemoryStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CoreHarness:
    """One peer's core over a MemoryStore, stepped by hand.

    `step` feeds events, then does what the edge does: writes the batch with
    sync and returns the actions. `crash` throws away unsynced state and
    rebuilds the core from the store, as a restart after kill -9 would.
    """

    def __init__(self, peer_id: str = "n1", slots: int = 1, config: Config | None = None, store=None):
        self.peer_id = peer_id
        self.slots = slots
        self.config = config or Config.simulation()
        self.store = store or MemoryStore()
        self.now = 1000.0
        self.tokens = 0
        self.core = self._boot()

    def _boot(self) -> PeerCore:
        snap = layout.start(self.store, self.peer_id)
        return PeerCore(self.peer_id, self.config, self.slots, random.Random(1), snap, self.now)

    def step(self, *events, sync: bool = True):
        """Every action of the batch, through the edge contract (`carry_out`):
        the immediate ones, then (with `sync`) the writes made durable, then
        the ones that waited for them."""
        for event in events:
            self.core.handle(event, self.now)
        carried: list = []

        def durably(writes, later):
            if sync:
                self.store.write(writes, sync=True)
            carried.extend(later)

        carry_out(*self.core.take(), at_once=carried.append, durably=durably)
        return carried

    def request(self, command):
        self.tokens += 1
        return ClientRequest((0, self.tokens), command)

    def crash(self) -> None:
        self.store.crash()
        self.core = self._boot()

    def tick(self, dt: float = 0.0):
        self.now += dt
        return self.step(Tick())


def wait_until(predicate, timeout_s: float = 15.0, interval_s: float = 0.05, why=lambda: ""):
    """Poll `predicate` every `interval_s` until it returns something true,
    which is returned; past `timeout_s`, AssertionError (with `why()`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s {why()}")


def replies(actions) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Reply)]


def starts(actions) -> list[StartJob]:
    return [a for a in actions if isinstance(a, StartJob)]


@pytest.fixture
def harness():
    return CoreHarness()


# ---------------------------------------------------------------------------
# Real peer processes on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerProcess:
    """`peerjobs node` as a child process; always stopped by the fixture."""

    def __init__(self, tmp_path, name: str = "n1", slots: int = 2, port: int | None = None, join=(), extra=()):
        self.name = name
        self.data = str(tmp_path / f"data-{name}")
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.slots = slots
        self.join = list(join)
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.log_path = str(tmp_path / f"{name}.log")

    def start(self, wait_s: float = 15.0) -> None:
        cmd = [sys.executable, "-m", "executor.client.cli", "node", "--data", self.data, "--listen", self.addr,
               "--name", self.name, "--slots", str(self.slots), *self.extra]
        for seed in self.join:
            cmd += ["--join", seed]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=self._log, stdout=self._log)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer {self.name} exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"peer {self.name} did not listen within {wait_s}s")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


@pytest.fixture
def peers(tmp_path):
    started: list[PeerProcess] = []

    def make(**kw) -> PeerProcess:
        p = PeerProcess(tmp_path, **kw)
        started.append(p)
        return p

    yield make
    for p in started:
        if p.proc and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def processes_under(path: str) -> list[int]:
    """Pids of live processes whose command line mentions `path`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if path in cmdline and state != "Z":
            pids.append(int(entry))
    return pids
