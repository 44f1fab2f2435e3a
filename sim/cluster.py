"""`python -m sim cluster`: real peers on loopback under kill -9 / restart chaos,
pauses, a slow disk or wall-clock steps.

    python -m sim cluster --peers 5 --jobs 10000 --job 5 --submit-to all \\
        --chaos kill-restart --kill-every 2 --seed 1
    python -m sim cluster --peers 3 --jobs 200 --seed 1 --chaos pause --json
    python -m sim cluster --peers 2 --chaos slow-disk --slow-sync-ms 300 --duration 12 --json
    python -m sim cluster --peers 3 --jobs 200 --seed 1 --chaos clock-step --kill-every 3 --json
    python -m sim cluster --peers 3 --jobs 300 --seed 1 --chaos power-cut --json
    python -m sim cluster --peers 3 --jobs 300 --seed 1 --chaos disk-full --json

Starts N `peerjobs node` processes (own ports and data dirs in one work dir,
joined through the first), drives them from many pipelined clients in one trio
process, SIGKILLs and restarts a seeded-random peer every few seconds, watches
every peer's PEERS view (membership and load) every 50 ms, waits for every
acknowledged job to finish, and then checks the whole history Jepsen-style
(sim/checker.py): nothing acknowledged lost, nothing duplicated, nothing
unexpected. The other nemeses (sim/nemesis.py): `pause` SIGSTOPs a random
peer for seconds, `slow-disk` starts peers whose fsyncs sleep (an LD_PRELOAD
shim, sim/slowsync.c), `clock-step` steps the wall clock of random peers by
± minutes (libfaketime) and probes that a pending WAIT keeps its time. The
disk nemeses put every peer's data dir on its own faultfs (sim/faultfs/):
`power-cut` kill -9s a peer (or all, `--cut-all`) and drops every write its
disk had not synced before restarting it, `disk-full` shrinks a random peer's
disk below its disk_free_bytes_min for seconds (its SUBMITs get `ERR
disk-full`, which the clients send again elsewhere).
Exit status 1 when an invariant breaks (the work dir, with each
peer's log, is then kept and its path printed). See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import trio

from executor.client import LINES, AsyncClient, Reply
from sim import checker, nemesis
from sim.bench import free_port

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
        self.cmd = [sys.executable, "-m", "executor.cli", "node", "--data", self.data, "--listen", self.addr,
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
# Talking to peers: through the one client library (executor/client.py)


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


# ---------------------------------------------------------------------------
# What happened, as plain data


@dataclass
class Record:
    t0: float
    submissions: list[checker.Submission] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_submit: float | None = None
    last_ack: float | None = None
    loads: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    transitions: dict[tuple[str, str], list[tuple[float, str, int]]] = field(default_factory=lambda: defaultdict(list))
    kills: list[checker.Kill] = field(default_factory=list)
    down: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    pauses: list[tuple[str, float, float]] = field(default_factory=list)  # (peer, SIGSTOP at, SIGCONT at)
    steps: list[tuple[str, float, int]] = field(default_factory=list)  # (peer, at, new wall offset s)
    probes: list[dict] = field(default_factory=list)  # WAIT probes across clock steps
    stats: dict[str, dict[str, str]] = field(default_factory=dict)  # each peer's STATS at the end
    unasked: list[str] = field(default_factory=list)  # peers that could not be asked at the end
    exited: list[str] = field(default_factory=list)  # peers that exited without being killed
    cuts: list[dict] = field(default_factory=list)  # power cuts: peers, at, what each disk dropped
    fulls: list[tuple[str, float, float]] = field(default_factory=list)  # (peer, disk full at, space back at)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def peers_sample(self, observer: str, t: float, lines: list[str]) -> None:
        for line in lines:
            parts = line.split(" ")
            if len(parts) < 3:
                continue
            member, state = parts[0], parts[2]
            fields = dict(x.split("=", 1) for x in parts[3:] if "=" in x)
            inc = int(fields["incarnation"]) if fields.get("incarnation", "-").isdigit() else -1
            if parts[-1] == "self":
                q, r = fields.get("queued", "0"), fields.get("running", "0")
                if q.isdigit() and r.isdigit():
                    self.loads[observer].append((t, int(q) + int(r)))
                continue
            trail = self.transitions[(observer, member)]
            if not trail or trail[-1][1:] != (state, inc):
                trail.append((t, state, inc))


class Workload:
    """Hands out submission tags to the clients; remembers each outcome."""

    def __init__(self, jobs: int, job: str, *, until=None) -> None:
        """`until`: None, or a callable that is true while the clients should
        go on submitting past `jobs` (`--duration`)."""
        self.jobs = jobs
        self.sleep_ms = int(job) if job.strip().isdigit() else None
        self.command = job
        self.next_tag = 0
        self.retry: deque[int] = deque()
        self.busy = 0
        self.disk_full: dict[str, int] = defaultdict(int)  # SUBMITs refused with ERR disk-full, by peer
        self.until = until

    def more(self) -> bool:
        return bool(self.retry) or self.next_tag < self.jobs or self.extra()

    def extra(self) -> bool:
        """Past `jobs`, and the duration is not over yet."""
        return self.next_tag >= self.jobs and self.until is not None and self.until()

    @property
    def tagged(self) -> bool:
        return self.sleep_ms is None

    def line(self, tag: int) -> str:
        return f"{self.sleep_ms}" if self.sleep_ms is not None else f"SUBMIT {self.command}; echo {tag}"

    def take(self) -> int | None:
        if self.retry:
            return self.retry.popleft()
        if self.next_tag < self.jobs or self.extra():
            self.next_tag += 1
            return self.next_tag - 1
        return None


# ---------------------------------------------------------------------------
# The run


async def _client(k: int, targets: list[PeerProc], wl: Workload, rec: Record, in_flight: int, rotate: bool, *,
                  reply_timeout_s: float | None = None, rotate_after: int = 5, pace=None) -> None:
    """One client connection at a time. `reply_timeout_s`: a connection whose
    oldest outstanding request has no reply for that long counts as broken (a
    partition stalls TCP instead of breaking it); `rotate_after`: failed
    connects before trying the next peer; `pace`: awaited before each
    submission (rate limiting)."""
    idx = k % len(targets)
    failures = 0
    while wl.more():
        peer = targets[idx]
        try:
            conn = await _open(peer.addr, timeout_s=1.0)
        except (*_CONN_ERRORS, trio.TooSlowError):
            failures += 1
            if rotate and failures % rotate_after == 0:
                idx = (idx + 1) % len(targets)
            await trio.sleep(0.05)
            continue
        failures = 0
        pending: deque[tuple[int, float]] = deque()
        window = trio.Semaphore(in_flight)
        state = {"done": False, "broken": False, "full": False}
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                try:
                    while True:
                        await window.acquire()
                        if pace is not None:
                            await pace()
                        tag = None if state["full"] else wl.take()  # a full peer: send nothing more to it
                        if tag is None:
                            state["done"] = True
                            if not pending:
                                nursery.cancel_scope.cancel()
                            return
                        now = rec.now()
                        if rec.first_submit is None:
                            rec.first_submit = now
                        pending.append((tag, now))
                        await conn.send_lines([wl.line(tag)])
                except _CONN_ERRORS:
                    state["broken"] = True
                    nursery.cancel_scope.cancel()

            async def reader() -> None:
                try:
                    while True:
                        if reply_timeout_s is None:
                            reply = await conn.read()
                        else:
                            reply = None
                            with trio.move_on_after(reply_timeout_s):
                                reply = await conn.read()
                            if reply is None:  # (cancelled reads leave nothing half-read: none was due)
                                if pending:
                                    raise ConnectionError(f"no reply from {peer.name} in {reply_timeout_s:g}s")
                                continue
                        tag, t_sent = pending.popleft()
                        now = rec.now()
                        if reply.ok:
                            rec.submissions.append(checker.Submission(tag, peer.name, checker.ACKED, reply.text.strip()))
                            rec.latencies.append(now - t_sent)
                            rec.last_ack = now
                        elif reply.code == "busy":
                            wl.busy += 1
                            wl.retry.append(tag)  # nothing was stored: send it again
                        elif reply.code == "disk-full":
                            # Nothing was stored either: send it again, to another peer or later
                            # (this connection ends once its outstanding replies are in).
                            wl.disk_full[peer.name] += 1
                            wl.retry.append(tag)
                            state["full"] = True
                        else:
                            rec.submissions.append(checker.Submission(tag, peer.name, checker.REJECTED))
                            rec.errors.append(f"{peer.name}: ERR {reply.code} {reply.message[:100]}")
                        window.release()
                        if state["done"] and not pending:
                            nursery.cancel_scope.cancel()
                except _CONN_ERRORS:
                    state["broken"] = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(writer)
            nursery.start_soon(reader)
        for tag, _ in pending:  # sent, never answered: may or may not exist
            rec.submissions.append(checker.Submission(tag, peer.name, checker.UNKNOWN))
        pending.clear()
        await conn.aclose()
        if state["broken"] or state["full"]:
            if rotate:
                idx = (idx + 1) % len(targets)
            await trio.sleep(0.1 if state["full"] else 0.02)
        elif wl.busy and wl.retry:
            await trio.sleep(0.05)


async def _poll_peers(peer: PeerProc, rec: Record, interval_s: float) -> None:
    """PEERS every `interval_s`: membership transitions and load, forever."""
    while True:
        try:
            conn = await _open(peer.addr, timeout_s=1.0)
        except (*_CONN_ERRORS, trio.TooSlowError):
            await trio.sleep(interval_s)
            continue
        try:
            while True:
                with trio.fail_after(2.0):
                    await conn.send_lines(["PEERS"])
                    reply = _as_tuple(await conn.read(LINES), "PEERS")
                if reply[0] == "ok":
                    rec.peers_sample(peer.name, rec.now(), reply[1])
                await trio.sleep(interval_s)
        except (*_CONN_ERRORS, trio.TooSlowError):
            pass
        finally:
            await conn.aclose()
        await trio.sleep(interval_s)


async def _chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args, disks: dict | None = None) -> None:
    """Every gap, kill -9 a random peer and restart it. With `disks` (the
    power-cut mode), its faultfs loses power at the same moment: the peer is
    killed first (so that nothing more is written), then the disk drops every
    write not made durable, then the peer restarts on what the disk kept;
    with --cut-all every peer loses power at once."""
    while True:
        await trio.sleep(args.kill_every * rng.uniform(0.75, 1.25))
        victims = list(cluster.peers) if disks and args.cut_all else [rng.choice(cluster.peers)]
        with trio.CancelScope(shield=True):  # never leave a peer down half-way
            for victim in victims:  # a peer that stopped by itself must not hide behind the kill
                if victim.proc is not None and not victim.running():
                    rec.errors.append(f"{victim.name} exited by itself (status {victim.proc.returncode}; see "
                                      f"{victim.log_path}) before the kill at {rec.now():.2f}s")
                    rec.exited.append(victim.name)
            t_kill = rec.now()
            for victim in victims:
                victim.kill9()
            if disks:
                dropped = {}
                for victim in victims:
                    dropped[victim.name] = await trio.to_thread.run_sync(disks[victim.name].power_cut)
                rec.cuts.append({"peers": [v.name for v in victims], "t": round(t_kill, 3), "dropped": dropped})
            if args.restart_delay > 0:
                await trio.sleep(args.restart_delay)
            for victim in victims:
                victim.spawn()
            for victim in victims:
                ok = await victim.wait_listening(30.0)
                t_up = rec.now() if ok else None
                rec.kills.append(checker.Kill(victim.name, t_kill, t_up))
                rec.down[victim.name].append((t_kill, t_up if t_up is not None else float("inf")))
                _say(f"{'kill -9 + power cut' if disks else 'kill -9'} {victim.name} at {t_kill:.2f}s; "
                     + (f"listening again after {t_up - t_kill:.2f}s" if ok else "did not come back"))
                if not ok:
                    rec.errors.append(f"{victim.name} did not restart after kill (see {victim.log_path})")
                    return


async def _full_chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args, disks: dict) -> None:
    """Every gap, fill a random peer's disk: its faultfs budget becomes what
    is used now plus a reserve below the peer's disk_free_bytes_min (faultfs
    reports the budget's remainder as free space), for --full-s seconds
    (±25 %), then the budget is lifted. The lift is in a `finally`, and the
    run lifts every budget before it checks: no way out leaves a disk full."""
    while True:
        await trio.sleep(args.full_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        length = args.full_s * rng.uniform(0.75, 1.25)
        disk = disks[victim.name]
        used = (await trio.to_thread.run_sync(disk.stats))["used_bytes"]
        t_full = rec.now()
        await trio.to_thread.run_sync(disk.set_budget_bytes, used + args.full_reserve_bytes)
        try:
            await trio.sleep(length)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(disk.set_budget_bytes, None)
                t_back = rec.now()
                rec.fulls.append((victim.name, t_full, t_back))
                _say(f"disk of {victim.name} full at {t_full:.2f}s ({args.full_reserve_bytes} bytes left), "
                     f"space back after {t_back - t_full:.2f}s")


async def _pause_chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args) -> None:
    """Every gap, SIGSTOP a random peer for --pause-s seconds (±25 %), then
    SIGCONT it. The SIGCONT is in a `finally`, and ProcessCluster.close()
    continues every peer before stopping it: no way out leaves a peer stopped."""
    while True:
        await trio.sleep(args.pause_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        length = args.pause_s * rng.uniform(0.75, 1.25)
        t_stop = rec.now()
        if not victim.pause():
            continue
        try:
            await trio.sleep(length)
        finally:
            victim.resume()
            t_cont = rec.now()
            rec.pauses.append((victim.name, t_stop, t_cont))
            rec.down[victim.name].append((t_stop, t_cont))
            _say(f"SIGSTOP {victim.name} at {t_stop:.2f}s, SIGCONT after {t_cont - t_stop:.2f}s")


_PROBE_TAG0 = 10_000_000  # WAIT probes' submission tags: far above any workload's
_PROBE_JOB_MS = 1500  # the probe job runs this long, so that its WAIT is pending at the step
_PROBE_ARM_S = 0.3  # between sending the WAIT and stepping the clock: the peer has read it


async def _wait_probe(peer: PeerProc, rec: Record, wl: Workload, tag: int, step_s: int, armed: trio.Event,
                      wait_s: float) -> None:
    """Issue 11 case 14: submit a job of 3 s to the peer whose clock is about
    to step, send `WAIT <id> <wait_s>`, let the step happen (`armed`), and
    record the answer and how long it took on the harness's monotonic clock.
    It fails when the answer is `ERR timeout` before `wait_s` has passed, or
    when no answer comes within `wait_s` + 10 s. The probe job is a recorded
    submission, so the checker accounts for it like any other."""
    # ok: True (answered in time), False (ERR timeout early, or no answer on an
    # open connection), None (inconclusive: the connection broke, e.g. a kill)
    probe = {"peer": peer.name, "step_s": step_s, "t": round(rec.now(), 3), "job": None, "answer": None,
             "after_s": None, "ok": None}
    line = f"SUBMIT sleep {_PROBE_JOB_MS / 1000:g}; echo {tag}" if wl.tagged else str(_PROBE_JOB_MS)
    outcome = checker.UNKNOWN
    try:
        client = await _open(peer.addr, timeout_s=2.0)
        try:
            reply = await client.request(line, timeout_s=10.0)
            if not reply.ok:
                outcome = checker.REJECTED
                probe["answer"] = f"submit ERR {reply.code}"
                return
            outcome, probe["job"] = checker.ACKED, reply.text.strip()
            t0 = time.monotonic()
            await client.send_lines([f"WAIT {probe['job']} {wait_s:g}"])
            await trio.sleep(_PROBE_ARM_S)
            armed.set()
            answer = None
            with trio.move_on_after(wait_s + 10.0):
                answer = await client.read()
            after = time.monotonic() - t0
            probe["after_s"] = round(after, 3)
            if answer is None:
                probe["answer"] = f"no answer within {wait_s + 10:g}s"
                probe["ok"] = False
            elif answer.ok:
                probe["answer"] = " ".join(answer.text.split(" ")[:2])
                probe["ok"] = True
            else:
                probe["answer"] = f"ERR {answer.code}"
                probe["ok"] = answer.code == "timeout" and after >= wait_s - _PROBE_ARM_S
        finally:
            await client.aclose()
    except (*_CONN_ERRORS, trio.TooSlowError, TimeoutError) as exc:
        probe["answer"] = f"connection: {exc!r}"[:200]
    finally:
        armed.set()
        rec.submissions.append(checker.Submission(tag, peer.name, outcome, probe["job"]))
        rec.probes.append(probe)
        _say(f"WAIT probe at {peer.name} across a {step_s:+d}s step: {probe['answer']} after {probe['after_s']}s")


async def _step_chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args, clocks: dict,
                      wl: Workload, probes: trio.Nursery) -> None:
    """Every gap, step the wall clock of a random peer by ±--step-s seconds
    (its monotonic clock does not move). With --wait-probe, a WAIT is pending
    at that peer when its clock jumps (`_wait_probe`, run in `probes`, which
    outlives this task)."""
    while True:
        await trio.sleep(args.step_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        clock = clocks[victim.name]
        offset = nemesis.next_offset(clock.offset_s, int(args.step_s), rng.random())
        if args.wait_probe and victim.running():
            armed = trio.Event()
            probes.start_soon(_wait_probe, victim, rec, wl, _PROBE_TAG0 + len(rec.steps), offset - clock.offset_s,
                              armed, args.wait_probe)
            with trio.move_on_after(15.0):  # (a paused or restarting peer may be slow to answer the submit)
                await armed.wait()
        clock.set(offset)
        rec.steps.append((victim.name, rec.now(), offset))
        _say(f"wall clock of {victim.name} stepped to {offset:+d}s at {rec.now():.2f}s")


def _shims_loaded(cluster: ProcessCluster) -> dict[str, bool]:
    """For each peer started with an LD_PRELOAD shim: is it mapped in the
    running process (/proc/<pid>/maps)? A nemesis that silently did not load
    would make a run pass for the wrong reason."""
    out = {}
    for p in cluster.peers:
        library = (p.env or {}).get("LD_PRELOAD")
        if library and p.running():
            try:
                with open(f"/proc/{p.proc.pid}/maps") as f:
                    out[p.name] = os.path.realpath(library) in f.read()
            except OSError:
                out[p.name] = False
    return out


def _faults(rec: Record) -> int:
    return len(rec.kills) + len(rec.pauses) + len(rec.steps) + len(rec.fulls)


def _nemesis_env(args, workdir: str, rng: random.Random) -> tuple[dict[str, dict[str, str]], dict, list[str]]:
    """Each peer's extra environment for the chosen mode, its wall clocks
    (clock-step), and the slowed peers (slow-disk). Raises
    nemesis.Unavailable with what to install."""
    names = [f"p{i + 1}" for i in range(args.peers)]
    env: dict[str, dict[str, str]] = {}
    clocks: dict[str, nemesis.WallClock] = {}
    slow: list[str] = []
    if args.chaos == "slow-disk":
        library = nemesis.build_slowsync(workdir)
        slow = sorted(rng.sample(names, min(args.slow_peers, len(names))))
        for name in slow:
            env[name] = nemesis.slowsync_env(library, args.slow_sync_ms)
    elif args.chaos == "disk-full":
        for name in names:  # (the peers' own default, 64 MiB, would need a 64 MiB reserve on every fill)
            env[name] = {"PEERJOBS_DISK_FREE_BYTES_MIN": str(args.disk_free_min_bytes)}
    elif args.chaos == "clock-step":
        if args.clock_tool == "shim":
            library = nemesis.build_wallclock(workdir)
        else:
            library = nemesis.libfaketime()
            if library is None:
                raise nemesis.Unavailable(nemesis.missing("clock-step", "libfaketime"))
        for name in names:  # every peer starts at offset 0 under the tool, so that any can be stepped
            clocks[name] = nemesis.WallClock(workdir, name)
            env[name] = clocks[name].env(library, args.clock_tool)
    return env, clocks, slow


async def _states(cluster: ProcessCluster, ids: list[str], verb: str = "STATUS") -> dict[str, tuple]:
    """`verb` for each id at its home, pipelined per home; ids whose home
    could not be asked are left out."""
    by_home: dict[str, list[str]] = defaultdict(list)
    for job_id in ids:
        by_home[checker.home_of(job_id)].append(job_id)
    out: dict[str, tuple] = {}

    async def ask(home: str, chunk: list[str]) -> None:
        peer = cluster.by_name.get(home)
        if peer is None:
            return
        try:
            replies = await request_many(peer.addr, [f"{verb} {j}" for j in chunk])
        except (*_CONN_ERRORS, trio.TooSlowError):
            return
        out.update(zip(chunk, replies))

    async with trio.open_nursery() as nursery:
        for home, chunk in by_home.items():
            nursery.start_soon(ask, home, chunk)
    return out


async def _states_retrying(cluster: ProcessCluster, ids: list[str], verb: str, tries: int = 4) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i in range(tries):
        todo = [j for j in ids if j not in out]
        if not todo:
            break
        if i:
            await trio.sleep(0.5)
        out.update(await _states(cluster, todo, verb))
    return out


def _state_of(reply: tuple) -> str | None:
    if reply[0] != "ok":
        return None
    parts = reply[1].split(" ")
    return parts[1] if len(parts) > 1 else None


async def drain(ask_states, rec: Record, deadline: float) -> float | None:
    """Wait until every acknowledged job is final at its home; the time it was
    seen so, or None at the deadline. `ask_states(ids)` returns the STATUS
    replies it could get, by id (homes it could not reach are asked again)."""
    open_ids = {s.job_id for s in rec.submissions if s.outcome == checker.ACKED}
    next_note = rec.now() + 2.0
    replies: dict[str, tuple] = {}
    while open_ids:
        if rec.now() >= next_note:
            next_note = rec.now() + 2.0
            some = sorted(open_ids)[:3]
            _say(f"{rec.now():.1f}s: {len(open_ids)} acknowledged jobs not finished yet, e.g. "
                 + "; ".join(" ".join(replies[j][1:]) if j in replies else f"{j} (no answer)" for j in some))
        if rec.now() > deadline:
            return None
        replies = await ask_states(sorted(open_ids))
        for job_id, reply in replies.items():
            if _state_of(reply) in ("done", "failed", "cancelled") or reply[:2] == ("err", "not-found"):
                open_ids.discard(job_id)  # (not found at its home: lost, and waiting will not help)
        if open_ids:
            await trio.sleep(0.2)
    return rec.now()


async def _settle(cluster: ProcessCluster, rec: Record, timeout_s: float) -> bool:
    """Wait until every peer's view shows every other peer alive."""
    names = [p.name for p in cluster.peers]
    with trio.move_on_after(timeout_s):
        while True:
            ok = all(rec.transitions.get((o, m)) and rec.transitions[(o, m)][-1][1] == "alive"
                     for o in names for m in names if o != m)
            if ok:
                return True
            await trio.sleep(0.1)
    return False



async def _collect(cluster: ProcessCluster, rec: Record, wl: Workload) -> tuple[dict, dict]:
    """Every job every home has issued (STATUS, then RESULT of the final
    ones), and every peer's LIST."""
    acked_max: dict[str, int] = defaultdict(int)
    for s in rec.submissions:
        if s.job_id:
            acked_max[checker.home_of(s.job_id)] = max(acked_max[checker.home_of(s.job_id)],
                                                       int(s.job_id.rpartition("-")[2]))
    observed: dict[str, checker.Observed] = {}
    listed: dict[str, list[str]] = {}
    for peer in cluster.peers:
        issued = acked_max[peer.name]
        for _ in range(3):
            try:
                probe = await request_many(peer.addr, ["STATS", "LIST 1000"])
                break
            except (*_CONN_ERRORS, trio.TooSlowError):
                await trio.sleep(0.5)
        else:
            rec.errors.append(f"could not ask {peer.name} at the end")
            rec.unasked.append(peer.name)
            continue
        if probe[0][0] == "ok":
            stats = dict(line.split("=", 1) for line in probe[0][1] if "=" in line)
            rec.stats[peer.name] = stats
            issued = max(issued, int(stats.get("issued", 0)))
        if probe[1][0] == "ok":
            listed[peer.name] = [line.split(" ", 1)[0] for line in probe[1][1]]
        ids = [f"{peer.name}-{k}" for k in range(1, issued + 1)]
        statuses = await _states_retrying(cluster, ids, "STATUS")
        results = await _states_retrying(cluster, [j for j in ids if _state_of(statuses.get(j, ("err",))) in
                                                   ("done", "failed", "cancelled")], "RESULT")
        for job_id in ids:
            status = statuses.get(job_id)
            if status is None:
                rec.errors.append(f"no answer about {job_id}")
                continue
            if status[0] != "ok":
                continue  # not found: absent
            parts = status[1].split(" ")
            fields = dict(x.split("=", 1) for x in parts[2:] if "=" in x)
            state, attempt, output = parts[1], int(fields.get("attempt", "1")), None
            result = results.get(job_id)
            if result is not None and result[0] == "ok":
                rparts = result[1].split(" ")
                rfields = dict(x.split("=", 1) for x in rparts[2:] if "=" in x)
                state, attempt, output = rparts[1], int(rfields.get("attempt", attempt)), result[2]
            runtime = fields.get("runtime_ms")
            observed[job_id] = checker.Observed(job_id, state, attempt, fields.get("executor", ""), output,
                                                int(runtime) if runtime and runtime.isdigit() else None)
    return observed, listed


@dataclass
class Outcome:
    report: dict
    ok: bool


async def run(args, workdir: str) -> Outcome:
    rng = random.Random(args.seed)
    # The nemeses draw from their own stream: kill-restart runs replay as before.
    nem_rng = random.Random(f"nemesis-{args.seed}")
    env, clocks, slow = _nemesis_env(args, workdir, nem_rng)
    names = [f"p{i + 1}" for i in range(args.peers)]
    disks = nemesis.mount_disks(workdir, names, args.fs_names) if args.chaos in nemesis.DISK_MODES else {}
    try:
        return await _run(args, workdir, rng, nem_rng, env, clocks, slow, disks)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(nemesis.unmount_disks, disks)


async def _run(args, workdir: str, rng: random.Random, nem_rng: random.Random, env: dict, clocks: dict,
               slow: list[str], disks: dict) -> Outcome:
    cluster = ProcessCluster(args.peers, args.slots, workdir, args.verbose, env=env,
                             data={name: nemesis.data_dir(d, name) for name, d in disks.items()})
    rec = Record(time.monotonic())
    until = None
    if args.duration > 0:
        def until() -> bool:
            return rec.first_submit is not None and rec.now() < rec.first_submit + args.duration
    wl = Workload(args.jobs, args.job, until=until)
    pace = _pacer(wl, args.rate, 20.0 if args.duration > 0 else 0.0)
    kills = args.chaos in ("kill-restart", "power-cut") or args.kill_every is not None
    t_start = t_end = 0.0
    shims: dict[str, bool] = {}
    try:
        await cluster.start()
        _say(f"{args.peers} peers up in {rec.now():.2f}s: " + " ".join(f"{p.name}={p.addr}" for p in cluster.peers))
        shims = _shims_loaded(cluster)
        for name in [n for n, ok in shims.items() if not ok]:
            rec.errors.append(f"{name}: the LD_PRELOAD shim is not mapped in the peer process: the nemesis did nothing")
        deadline = rec.now() + args.timeout
        timed_out, t_done = False, None
        async with trio.open_nursery() as watchers:
            for p in cluster.peers:
                watchers.start_soon(_poll_peers, p, rec, 0.05)
            await _settle(cluster, rec, 10.0)
            t_start = rec.now()
            with trio.move_on_after(args.timeout) as scope:
                async with trio.open_nursery() as probes:
                    async with trio.open_nursery() as chaos_nursery:
                        if kills:
                            chaos_nursery.start_soon(_chaos, cluster, rec, rng, args,
                                                     disks if args.chaos == "power-cut" else None)
                        if args.chaos == "disk-full":
                            chaos_nursery.start_soon(_full_chaos, cluster, rec, nem_rng, args, disks)
                        if args.chaos == "pause":
                            chaos_nursery.start_soon(_pause_chaos, cluster, rec, nem_rng, args)
                        elif args.chaos == "clock-step":
                            chaos_nursery.start_soon(_step_chaos, cluster, rec, nem_rng, args, clocks, wl, probes)
                        targets = cluster.peers[:1] if args.submit_to == "one" else cluster.peers
                        async with trio.open_nursery() as clients:
                            for k in range(args.clients):
                                clients.start_soon(functools.partial(_client, k, targets, wl, rec, args.in_flight,
                                                                     args.submit_to == "all", pace=pace))
                        t_submitted = rec.now()
                        _say(f"{sum(1 for s in rec.submissions if s.outcome == checker.ACKED)} submissions "
                             f"acknowledged in {t_submitted - t_start:.2f}s; waiting for them to finish")
                        t_done = await drain(lambda ids: _states(cluster, ids), rec, deadline)
                        while args.chaos != "none" and rec.now() < deadline and (
                                len(rec.kills) < args.min_kills or _faults(rec) < args.min_faults
                                or (rec.first_submit is not None and rec.now() < rec.first_submit + args.duration)):
                            await trio.sleep(0.1)
                        chaos_nursery.cancel_scope.cancel()
                # the WAIT probes have ended (each is bounded): their jobs must be final too
                if rec.probes and t_done is not None:
                    t_done = await drain(lambda ids: _states(cluster, ids), rec, deadline)
            if scope.cancelled_caught or t_done is None:
                timed_out = True
                t_done = None
                _say(f"timeout after {args.timeout:g}s: stopping the workload and checking what there is")
            settled = await _settle(cluster, rec, 15.0)
            if not settled:
                rec.errors.append("the cluster's views did not all show every peer alive within 15 s after the chaos")
            t_end = rec.now()
            for p in cluster.peers:  # the harness restarts what it kills: any other exit is the peer's own
                if not p.running():
                    rec.exited.append(p.name)
                    rec.errors.append(f"{p.name} exited by itself (status {p.proc.returncode}; see {p.log_path})")
            observed, listed = await _collect(cluster, rec, wl)
            watchers.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            cluster.close()
    verdict = checker.check(rec.submissions, observed, listed, tagged=wl.tagged)
    report = _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled)
    report.update(_nemesis_report(args, rec, slow, wl.disk_full))
    report["peers_exited"], report["peers_unasked"] = sorted(set(rec.exited)), rec.unasked
    report["shims_loaded"] = shims
    report["ok"] = (report["ok"] and not rec.exited and not rec.unasked and all(shims.values())
                    and all(t["met"] for t in report.get("targets", {}).values()))
    return Outcome(report, report["ok"])


def _pacer(wl: Workload, rate: float, extra_rate: float):
    """An async callable that lets `rate` submissions per second through (0:
    all), and `extra_rate` per second past --jobs while --duration lasts."""
    state = {"next": None}

    async def pace() -> None:
        r = rate if rate > 0 else (extra_rate if wl.extra() else 0.0)
        if r <= 0:
            return
        now = trio.current_time()
        t = now if state["next"] is None else max(state["next"], now)
        state["next"] = t + 1.0 / r
        await trio.sleep(t - now)

    return pace


def _nemesis_report(args, rec: Record, slow: list[str], wl_refusals: dict | None = None) -> dict:
    """What the pause / slow-disk / clock-step nemeses did and measured, and
    the issue's targets where a number decides them (`targets`: value,
    target, met; a missed target fails the run like a lost job)."""
    out: dict = {}
    targets: dict[str, dict] = {}
    if rec.pauses:
        lengths = [b - a for _, a, b in rec.pauses]
        out["pauses"] = len(rec.pauses)
        # The same membership timings as a kill: suspected / declared dead while
        # stopped, and alive again (at the incarnation it refutes with) in every view.
        timings = checker.kill_timings([checker.Kill(p, a, b) for p, a, b in rec.pauses], dict(rec.transitions),
                                       [f"p{i + 1}" for i in range(args.peers)])
        out["pause_log"] = [{"peer": p, "t": round(a, 3), "s": round(b - a, 3),
                             **{k: t[k] for k in ("suspect_first_s", "detect_first_s")},  # (from the SIGSTOP)
                             "killed": any(k.peer == p and a <= k.t_kill <= b for k in rec.kills),
                             "alive_after_cont_s": None if t["rejoin_all_s"] is None else
                             round(t["rejoin_all_s"] - (b - a), 3)}
                            for (p, a, b), t in zip(rec.pauses, timings)]
        for entry in out["pause_log"]:  # killed while stopped: its new life answers, not the stopped one
            if entry["killed"]:
                entry["alive_after_cont_s"] = None
        out["pause_max_s"] = round(max(lengths), 3)
        out["pauses_declared_dead"] = sum(1 for t in timings if t["detect_first_s"] is not None)
    chaos = getattr(args, "chaos", None)
    if chaos == "power-cut":
        out["power_cuts"] = len(rec.cuts)
        out["fs_names"] = args.fs_names
        out["cut_log"] = rec.cuts
    if chaos == "disk-full":
        out["disk_fulls"] = len(rec.fulls)
        out["full_log"] = [{"peer": p, "t": round(a, 3), "s": round(b - a, 3)} for p, a, b in rec.fulls]
        out["disk_full_refusals"] = dict(sorted((wl_refusals or {}).items()))
    if rec.steps:
        out["clock_steps"] = len(rec.steps)
        out["step_log"] = [{"peer": p, "t": round(t, 3), "offset_s": o} for p, t, o in rec.steps]
    if rec.probes:
        out["wait_probes"] = rec.probes
        bad = [p for p in rec.probes if p["ok"] is False]
        out["wait_probes_inconclusive"] = sum(1 for p in rec.probes if p["ok"] is None)
        targets["wait_probes_failed"] = {"value": len(bad), "target": 0, "met": not bad}
    if slow and args.kill_every is None:  # (a kill bumps the incarnation: the targets would mean nothing)
        per = {}
        for name in slow:
            views = [(o, m) for (o, m) in rec.transitions if m == name and o != name]
            suspect = sum(1 for key in views for _, st, _ in rec.transitions[key] if st == "suspect")
            dead = sum(1 for key in views for _, st, _ in rec.transitions[key] if st == "dead")
            incs = [inc for key in views for _, _, inc in rec.transitions[key]]
            stats = rec.stats.get(name, {})
            own = int(stats["incarnation"]) if stats.get("incarnation", "").isdigit() else -1
            others = [rec.stats.get(o, {}) for o in rec.stats if o != name]
            per[name] = {
                "sync_ms": args.slow_sync_ms,
                "suspicions": suspect,  # transitions to suspect in the others' views (PEERS every 50 ms)
                "declared_dead": dead,
                "incarnation_max": max(incs + [own]),
                "refutations": int(stats.get("gossip_refutations", 0) or 0),
                "pauses_detected": int(stats.get("gossip_pauses_detected", 0) or 0),
                "others_probes_failed": sum(int(s.get("gossip_probes_failed", 0) or 0) for s in others),
            }
        out["slow_disk"] = per
        suspicions = sum(v["suspicions"] + v["declared_dead"] for v in per.values())
        inc_max = max(v["incarnation_max"] for v in per.values())
        targets["slow_peer_suspicions"] = {"value": suspicions, "target": 0, "met": suspicions == 0}
        targets["slow_peer_incarnation_max"] = {"value": inc_max, "target": 2, "met": 0 < inc_max <= 2}
    if targets:
        out["targets"] = targets
    return out


def _report(args, rec: Record, wl: Workload, verdict: checker.Verdict, observed: dict, t_start: float,
            t_done: float | None, t_end: float, timed_out: bool, settled: bool) -> dict:
    summary = verdict.summary()
    first = rec.first_submit if rec.first_submit is not None else t_start
    done_ids = [s.job_id for s in rec.submissions if s.outcome == checker.ACKED
                and observed.get(s.job_id) is not None and observed[s.job_id].state == "done"]
    makespan = (t_done - first) if t_done is not None else None
    if wl.sleep_ms is not None:
        work_s = len(done_ids) * wl.sleep_ms / 1000
    else:
        runtimes = [observed[j].runtime_ms for j in done_ids if observed[j].runtime_ms is not None]
        work_s = sum(runtimes) / 1000 if runtimes else None  # measured run time of the final attempts
    ideal = work_s / (args.peers * args.slots) if work_s is not None else None
    series = checker.imbalance_series(dict(rec.loads), dict(rec.down), first, t_done if t_done is not None else t_end)
    values = [v for _, v in series]
    timings = checker.kill_timings(rec.kills, dict(rec.transitions), [f"p{i + 1}" for i in range(args.peers)])
    detect = [k["detect_all_s"] for k in timings if k["detect_all_s"] is not None]
    detect_first = [k["detect_first_s"] for k in timings if k["detect_first_s"] is not None]
    rejoin = [k["rejoin_all_s"] for k in timings if k["rejoin_all_s"] is not None]
    restart = [k["restart_s"] for k in timings if k["restart_s"] is not None]

    def r(x, nd=3):
        return None if x is None else round(x, nd)

    report = {
        **{k: summary[k] for k in ("lost", "duplicated", "unexpected", "mismatched", "reexecuted", "extra_attempts",
                                   "acked", "unknown", "recovered", "rejected")},
        "ok": verdict.ok and not timed_out,
        "timed_out": timed_out,
        "settled": settled,
        "peers": args.peers, "slots": args.slots, "jobs": args.jobs, "job": args.job, "seed": args.seed,
        "submit_to": args.submit_to, "chaos": args.chaos, "clients": args.clients,
        "busy_retries": wl.busy,
        "submit_s": r(rec.last_ack - first if rec.last_ack is not None else None, 2),
        "acks_per_s": r(len(rec.latencies) / (rec.last_ack - first) if rec.last_ack and rec.last_ack > first else None, 1),
        "ack_p50_ms": r((checker.percentile(rec.latencies, 0.5) or 0) * 1000),
        "ack_p99_ms": r((checker.percentile(rec.latencies, 0.99) or 0) * 1000),
        "makespan_s": r(makespan, 2),
        "jobs_per_s": r(len(done_ids) / makespan if makespan else None, 1),
        "ideal_s": r(ideal, 2),
        "makespan_over_ideal": r(makespan / ideal if makespan and ideal else None, 2),
        "imbalance_mean": r(sum(values) / len(values) if values else None, 2),
        "imbalance_p99": checker.percentile(values, 0.99),
        "imbalance_max": max(values) if values else None,
        "kills": len(rec.kills),
        "restart_median_s": r(checker.median(restart)),
        "detect_median_s": r(checker.median(detect)),
        "detect_max_s": r(max(detect) if detect else None),
        "detect_first_median_s": r(checker.median(detect_first)),
        "kills_never_declared_dead": sum(1 for k in timings if k["detect_first_s"] is None),
        "rejoin_median_s": r(checker.median(rejoin)),
        "rejoin_max_s": r(max(rejoin) if rejoin else None),
        "lost_states": summary["lost_states"],
        "examples": summary["examples"],
        "kill_log": timings,
        "errors": rec.errors[:20],
    }
    if args.plot:
        report["plot"] = _plot(args.plot, rec, first, t_end)
    return report


def _plot(path: str, rec: Record, t_start: float, t_end: float) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("--plot: matplotlib is not installed (pip install matplotlib); no plot drawn")
        return None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for name in sorted(rec.loads):
        pts = []
        for t, v in rec.loads[name]:
            if t_start - 1 <= t <= t_end:
                if pts and t - pts[-1][0] > 0.3:
                    pts.append((t, float("nan")))  # no samples: the peer was down; break the line
                pts.append((t, v))
        if pts:
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=name, linewidth=0.9)
    for k in rec.kills:
        ax.axvline(k.t_kill, color="red", linestyle=":", linewidth=0.8)
        ax.text(k.t_kill, ax.get_ylim()[1], f" {k.peer}", color="red", fontsize=7, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("queued + running")
    ax.set_title("load per peer (red: kill -9 + restart)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print_report(rep: dict) -> None:
    def f(x, unit=""):
        return "-" if x is None else f"{x}{unit}"

    lines = verdict_lines(rep) + [
        f"re-executed  {rep['reexecuted']} jobs ({rep['extra_attempts']} extra attempts)",
        f"throughput   {f(rep['jobs_per_s'])} jobs/s end to end; acks {f(rep['acks_per_s'])}/s, "
        f"ack p50 {f(rep['ack_p50_ms'], ' ms')} p99 {f(rep['ack_p99_ms'], ' ms')}",
        f"makespan     {f(rep['makespan_s'], ' s')} vs ideal {f(rep['ideal_s'], ' s')} = {f(rep['makespan_over_ideal'], 'x')}",
        f"imbalance    max-min of queued+running: mean {f(rep['imbalance_mean'])}, p99 {f(rep['imbalance_p99'])}, "
        f"max {f(rep['imbalance_max'])}",
        f"kills        {rep['kills']}: restart median {f(rep['restart_median_s'], ' s')}; dead in every view: median "
        f"{f(rep['detect_median_s'], ' s')} max {f(rep['detect_max_s'], ' s')} (first view median "
        f"{f(rep['detect_first_median_s'], ' s')}; {rep['kills_never_declared_dead']} restarted before any view "
        f"declared them dead)",
        f"rejoin       alive (new incarnation) in every view: median {f(rep['rejoin_median_s'], ' s')} max "
        f"{f(rep['rejoin_max_s'], ' s')}",
    ]
    lines += nemesis_lines(rep)
    lines += findings_lines(rep)
    print("\n".join(lines), file=sys.stderr, flush=True)


def nemesis_lines(rep: dict) -> list[str]:
    """The pauses, clock steps, WAIT probes and slow disks of a run, and the
    issue's targets."""
    lines = []
    if rep.get("pauses"):
        lines.append(f"pauses       {rep['pauses']} SIGSTOPs, longest {rep['pause_max_s']} s; declared dead in some "
                     f"view during {rep['pauses_declared_dead']}; alive again in every view after SIGCONT: "
                     + ", ".join(f"{x['alive_after_cont_s']}" for x in rep["pause_log"]) + " s")
    if rep.get("clock_steps"):
        lines.append(f"clock steps  {rep['clock_steps']}: " + ", ".join(
            f"{s['peer']}→{s['offset_s']:+d}s@{s['t']:.1f}" for s in rep["step_log"][:8]))
    for p in rep.get("wait_probes", []):
        lines.append(f"WAIT probe   {p['peer']} step {p['step_s']:+d}s: {p['answer']} after {p['after_s']} s"
                     + {True: "", False: "  <-- FAILED", None: "  (inconclusive)"}[p["ok"]])
    for name, v in rep.get("slow_disk", {}).items():
        lines.append(f"slow disk    {name} ({v['sync_ms']} ms per fsync): suspected {v['suspicions']}x, declared dead "
                     f"{v['declared_dead']}x, incarnation max {v['incarnation_max']}, refutations "
                     f"{v['refutations']}, pauses detected {v['pauses_detected']}, others' failed probes "
                     f"{v['others_probes_failed']}")
    if "power_cuts" in rep:
        dropped = sum(d.get("dropped_dirty_bytes", 0) for c in rep["cut_log"] for d in c["dropped"].values())
        lines.append(f"power cuts   {rep['power_cuts']} (faultfs names={rep['fs_names']}): "
                     + ", ".join(f"{'+'.join(c['peers'])}@{c['t']:.1f}" for c in rep["cut_log"][:8])
                     + f"; {dropped} unsynced bytes dropped in all")
    if "disk_fulls" in rep:
        lines.append(f"disk full    {rep['disk_fulls']}: " + ", ".join(
            f"{f['peer']}@{f['t']:.1f} for {f['s']}s" for f in rep["full_log"][:8])
            + f"; SUBMITs refused with disk-full: {rep['disk_full_refusals'] or 'none'}; peers that exited: "
            + (", ".join(rep.get("peers_exited", [])) or "none"))
    for name, t in rep.get("targets", {}).items():
        lines.append(f"target       {name} = {t['value']} (target {'<= ' if 'max' in name else ''}{t['target']}): "
                     + ("met" if t["met"] else "MISSED"))
    return lines


def verdict_lines(rep: dict) -> list[str]:
    """The checker's verdict and the submissions, as every harness reports them."""
    return [
        f"verdict      {'OK' if rep['ok'] else 'FAILED'}: lost={rep['lost']} duplicated={rep['duplicated']} "
        f"unexpected={rep['unexpected']} mismatched={rep['mismatched']}" + (" (TIMED OUT)" if rep["timed_out"] else ""),
        f"submissions  acked={rep['acked']} unknown={rep['unknown']} (recovered {rep['recovered']}) "
        f"rejected={rep['rejected']} busy-retries={rep['busy_retries']}",
    ]


def findings_lines(rep: dict) -> list[str]:
    """Examples of whatever broke, and the harness's own errors."""
    lines = []
    if rep["lost"]:
        lines.append(f"lost         states {rep['lost_states']}; e.g. {rep['examples']['lost']}")
    for key in ("duplicated", "unexpected", "mismatched"):
        if rep[key]:
            lines.append(f"{key:12s} e.g. {rep['examples'][key]}")
    lines += [f"error        {e}" for e in rep["errors"]]
    return lines


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, bare or wrapped in the exception group trio raises it in when
    it lands inside a nursery."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None)


# The gray-failure and disk modes keep submissions flowing while they act (a
# fault that hits an idle cluster shows little); kill-restart and none end with
# the work.
_DEFAULT_DURATION_S = {"pause": 10.0, "clock-step": 10.0, "slow-disk": 12.0, "disk-full": 8.0,
                       "power-cut": 8.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=3, help="peer processes (default 3)")
    p.add_argument("--slots", type=int, default=2, help="slots of each peer (default 2)")
    p.add_argument("--jobs", type=int, default=1000, help="submissions (default 1000)")
    p.add_argument("--job", default="10", help="an integer: an in-peer sleep of that many ms; otherwise a shell "
                                                "command, run as '<command>; echo <n>' (default 10)")
    p.add_argument("--submit-to", choices=("one", "all"), default="all", help="clients talk to p1 only, or spread")
    p.add_argument("--clients", type=int, default=16, help="concurrent client connections (default 16)")
    p.add_argument("--in-flight", type=int, default=32, help="pipelined submissions per client (default 32)")
    p.add_argument("--chaos", choices=("none", "kill-restart", "pause", "slow-disk", "clock-step", "power-cut",
                                       "disk-full"), default="none",
                   help="kill-restart: kill -9 and restart; pause: SIGSTOP/SIGCONT; slow-disk: peers whose fsyncs "
                        "sleep; clock-step: wall-clock steps of random peers; power-cut: kill -9 and a power cut "
                        "of the peer's faultfs; disk-full: a random peer's faultfs runs out of space for seconds")
    p.add_argument("--kill-every", type=float, default=None,
                   help="mean seconds between kills, ±25%% jitter (default 2 with kill-restart and power-cut; with "
                        "another --chaos mode, kills happen only when this is given)")
    p.add_argument("--restart-delay", type=float, default=0.0, help="seconds a killed peer stays down (default 0)")
    p.add_argument("--min-kills", type=int, default=0, help="keep the chaos going until this many kills happened")
    p.add_argument("--min-faults", type=int, default=None,
                   help="keep the chaos going until this many kills (power cuts), pauses, clock steps and disk "
                        "fills happened (default 2 with pause and clock-step, 3 with power-cut, 1 with disk-full, "
                        "else 0)")
    p.add_argument("--duration", type=float, default=None,
                   help="keep the chaos and the submissions going at least this many seconds after the first "
                        "submission (past --jobs at --rate, 20/s if --rate is 0); default 10 with pause and "
                        "clock-step, 12 with slow-disk, 8 with power-cut and disk-full, else 0")
    p.add_argument("--rate", type=float, default=0.0, help="submissions per second, all clients together (0: unpaced)")
    p.add_argument("--pause-every", type=float, default=3.0, help="pause: mean seconds between pauses (default 3)")
    p.add_argument("--pause-s", type=float, default=3.0, help="pause: seconds a peer stays stopped, ±25%% (default 3)")
    p.add_argument("--slow-sync-ms", type=int, default=300, help="slow-disk: ms every fsync sleeps (default 300)")
    p.add_argument("--slow-peers", type=int, default=1, help="slow-disk: how many peers have the slow disk")
    p.add_argument("--cut-all", action="store_true", help="power-cut: every peer loses power at once")
    p.add_argument("--fs-names", choices=("dir", "any"), default="dir",
                   help="power-cut, disk-full: faultfs's model of names: dir (strict POSIX: a create or rename is "
                        "durable after an fsync of its directory; default) or any (any fsync makes every earlier "
                        "name durable, as ext4/XFS)")
    p.add_argument("--full-every", type=float, default=2.0, help="disk-full: mean seconds between fills (default 2)")
    p.add_argument("--full-s", type=float, default=2.0, help="disk-full: seconds a disk stays full, ±25%% (default 2)")
    p.add_argument("--disk-free-min-bytes", type=int, default=16 << 20,
                   help="disk-full: the peers' disk_free_bytes_min (PEERJOBS_DISK_FREE_BYTES_MIN; default 16 MiB)")
    p.add_argument("--full-reserve-bytes", type=int, default=4 << 20,
                   help="disk-full: free bytes left on a full disk, below --disk-free-min-bytes (default 4 MiB)")
    p.add_argument("--step-every", type=float, default=2.0, help="clock-step: mean seconds between steps (default 2)")
    p.add_argument("--step-s", type=int, default=600, help="clock-step: size of a wall-clock step (default 600)")
    p.add_argument("--clock-tool", choices=("shim", "libfaketime"), default="shim",
                   help="clock-step: how a peer's wall clock is stepped: sim/wallclock.c (default) or libfaketime "
                        "(slows the peer by itself, see docs/chaos.md)")
    p.add_argument("--wait-probe", type=float, default=30.0,
                   help="clock-step: at each step a 'WAIT <id> S' is pending at the stepped peer; it must not "
                        "time out early (default 30; 0: no probe)")
    p.add_argument("--seed", type=int, default=1, help="seeds which peer is killed and when")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on the workload after this many seconds")
    p.add_argument("--workdir", default=None, help="directory for data dirs and logs (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir even when the run passes")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="draw each peer's load over time (matplotlib)")
    p.add_argument("-v", "--verbose", action="store_true", help="peers log every job event")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.peers < 1 or args.jobs < 0 or args.slots < 1 or args.clients < 1 or args.in_flight < 1:
        print("cluster: --peers, --slots, --clients, --in-flight must be >= 1 and --jobs >= 0", file=sys.stderr)
        return 2
    if args.duration is None:
        args.duration = _DEFAULT_DURATION_S.get(args.chaos, 0.0)
    if args.min_faults is None:
        args.min_faults = {"pause": 2, "clock-step": 2, "disk-full": 1, "power-cut": 3}.get(args.chaos, 0)
    if min(args.duration, args.rate, args.wait_probe, args.slow_sync_ms) < 0 or min(
            args.pause_every, args.pause_s, args.step_every, args.step_s, args.slow_peers) <= 0:
        print("cluster: --duration, --rate, --wait-probe, --slow-sync-ms must be >= 0; --pause-every, --pause-s, "
              "--step-every, --step-s, --slow-peers > 0", file=sys.stderr)
        return 2
    if args.kill_every is not None and args.kill_every <= 0:
        print("cluster: --kill-every must be > 0", file=sys.stderr)
        return 2
    if args.chaos == "disk-full" and not (0 <= args.full_reserve_bytes < args.disk_free_min_bytes
                                          and args.full_every > 0 and args.full_s > 0):
        print("cluster: disk-full needs 0 <= --full-reserve-bytes < --disk-free-min-bytes, and --full-every, "
              "--full-s > 0", file=sys.stderr)
        return 2
    if args.chaos in ("kill-restart", "power-cut") and args.kill_every is None:
        args.kill_every = 2.0
    why = nemesis.missing(args.chaos, args.clock_tool)
    if why:
        print(f"cluster: {why}", file=sys.stderr)
        return 2
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        workdir, made = args.workdir, False
    else:
        workdir, made = tempfile.mkdtemp(prefix="peerjobs-cluster-"), True
    ok = False
    try:
        outcome = trio.run(run, args, workdir)
        ok = outcome.ok
        _print_report(outcome.report)
        if args.json:
            print(json.dumps(outcome.report), flush=True)
    except BaseException as exc:
        if not is_interrupt(exc):
            raise
        _say("interrupted; every peer stopped")
        return 130
    finally:
        for cluster in list(_live_clusters):  # whatever path we left run() by
            cluster.close()
        if not ok or args.keep:
            _say(f"work dir kept (peer logs p<i>.log, data dirs p<i>/): {workdir}")
        elif made:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
