"""The deterministic simulation: the real sans-IO cores over a seeded event heap.

    python -m sim simulate --peers 8 --jobs 500 --seed 42
    python -m sim simulate --peers 200 --jobs 20000 --seed 1 --no-wire

Theory of operation
-------------------
Every simulated peer is the code a real peer runs — `executor.core.PeerCore`
with an `executor.cluster.Cluster` (SWIM membership inside) over a
`storage.store.MemoryStore` — built exactly as `executor/node.py` builds it.
Only the edge is replaced: instead of trio tasks, sockets, subprocesses and
LevelDB, one heap of timed events and a virtual clock (FoundationDB /
TigerBeetle VOPR style; docs/simulation.md).

The edge mirrors node.py's semantics:

* A core handles one event, then `take()`s its writes and actions. StartJob,
  KillJob and Log take effect at once; the writes and the remaining actions
  (Reply, ReplyResult, Send) join the peer's *pending* batch.
* A peer has one disk. When it is idle, the pending batch is handed to it and
  synced after a seeded fsync delay; batches arriving meanwhile wait and are
  synced together next (node.py's committer: group commit, pipelined). A batch
  without writes is released at once if the disk is idle, else behind the sync.
  Only when the sync completes are the batch's actions carried out.
* A crash throws away the pending and in-sync batches (their writes are lost by
  `MemoryStore.crash()`, their actions never happen), the peer's running jobs,
  its in-flight messages and its clients' outstanding requests (the clients
  retry). A restart rebuilds the core from `layout.start(store, name)`, which
  bumps the incarnation, exactly as a real restart does.
* Links are one-way and FIFO per (sender, receiver address), like TCP links in
  executor/links.py. A send to a peer that is down, behind a partition, or on
  a link broken by a fault is dropped and the sender hears `PeerUnreachable`
  (only if it named the peer, as links.py does); a failed link drops sends for
  a 50 ms back-off (links.py's `_RECONNECT_BACKOFF_S`).
* Gray failures (issue 11): a *paused* peer (SIGSTOP) handles nothing for a
  while — every heap entry and message for it waits, in order, until it
  resumes; a *slow disk* makes one peer's syncs take 100-500 ms for a while;
  every peer has its own *wall clock* (`wall = now + offset`, stepped by
  ±minutes), which the cores get only for display (`handle(event, now,
  wall)`): `now`, monotonic, drives every deadline.

Safety invariants are checked after every step and at every durable write
(see `_check_touched`, `_check_safe`, `_check_step`); the liveness phase then
stops all faults and requires every acknowledged job to be final at its home
within `--liveness-s` virtual seconds. Everything random comes from one
`random.Random(seed)`; the trace hash (sha256 over every event delivered to a
core, with its virtual time and peer) proves that a seed replays exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import cbor2

from executor.cluster import Cluster
from executor.config import Config
from executor.core import (
    ClientRequest,
    JobExited,
    KillJob,
    Log,
    PeerCore,
    PeerMessage,
    PeerUnreachable,
    Reply,
    ReplyResult,
    read_result,
    Send,
    StartJob,
    Tick,
)
from executor.protocol import JobSpec, Submit, split_job_id
from gossip import wire
from gossip.membership import GOSSIP_MESSAGES, MemberState
from storage import layout
from storage.store import MemoryStore

# Heap entry kinds. An entry is (time, serial, kind, a, b, c); the serial
# breaks ties in insertion order, which keeps links FIFO and runs deterministic.
(_EVENT, _TICK, _SYNC, _MSG, _JOB, _SUBMIT, _CRASH, _RESTART, _PARTITION, _HEAL, _BREAK, _SAMPLE, _PHASE, _PAUSE,
 _SLOW_DISK, _CLOCK_STEP) = range(16)
# Entries a paused peer would handle: they wait (in order) until it resumes.
_PEER_KINDS = frozenset((_EVENT, _TICK, _SYNC, _JOB))

_TICK_EVENT = Tick()
_RECONNECT_BACKOFF_S = 0.05  # executor/links.py: a failed link drops frames this long
_SAMPLE_INTERVAL_S = 0.05  # load imbalance sampling period
_JOB_PREFIXES = (layout.JOB, layout.HELD, layout.OUTBOX)
_FINAL_STATES = ("done", "failed", "cancelled")
# Wall clocks: a realistic epoch (so that a core mixing up its two clocks is
# off by decades, not by a few seconds), a per-peer skew, ±minutes steps.
_WALL_EPOCH_S = 1_800_000_000.0
_WALL_SKEW_S_MAX = 120.0
_CLOCK_STEP_S = (60.0, 600.0)
_PAUSE_S = (0.5, 4.0)  # a SIGSTOPped peer, as `sim cluster --chaos pause`
_SLOW_DISK_S = (0.5, 3.0)  # how long a peer's disk stays slow
_SLOW_DISK_SYNC_S = (0.1, 0.5)  # each of its syncs meanwhile (issue 11 case 13: 300 ms)


class InvariantViolation(AssertionError):
    """A safety or liveness property of the cluster does not hold."""


@dataclass
class Options:
    peers: int = 5
    jobs: int = 200
    seed: int = 1
    slots: int = 2
    submit_to: str = "all"
    crash_every_s: float = 1.5
    partition_every_s: float = 3.0
    break_every_s: float = 0.5
    duration_s: float = 6.0
    liveness_s: float = 60.0
    wire: bool | None = None  # None: on for small runs
    slow_syncs: float = 0.01  # share of fsyncs that stall 50-500 ms (during the fault phase too: a fault)
    pause_every_s: float = 3.0  # mean virtual seconds between pauses of a peer (0: none)
    slow_disk_every_s: float = 3.0  # mean virtual seconds between a peer's disk turning slow for a while (0: none)
    clock_step_every_s: float = 1.5  # mean virtual seconds between wall-clock steps of a peer (0: none)
    long_jobs: float = 0.05  # share of jobs sleeping 100-1000 ms (the rest 0-50 ms)
    trace: bool = False
    check_membership: str = "auto"  # full: validate_state() every step; period: once per peer per probe period

    def membership_full(self) -> bool:
        return self.check_membership == "full" or (self.check_membership == "auto" and self.peers <= 50)
    hash_trace: bool = True

    def wire_on(self) -> bool:
        return self.wire if self.wire is not None else self.peers * max(self.jobs, 1) <= 200_000

    def command(self) -> str:
        """The one-line command that replays this run exactly."""
        parts = [
            "python -m sim simulate",
            f"--peers {self.peers}", f"--jobs {self.jobs}", f"--seed {self.seed}", f"--slots {self.slots}",
            f"--submit-to {self.submit_to}", f"--crash-every {self.crash_every_s:g}",
            f"--partition-every {self.partition_every_s:g}", f"--break-every {self.break_every_s:g}",
            f"--duration {self.duration_s:g}", f"--liveness-s {self.liveness_s:g}",
            f"--long-jobs {self.long_jobs:g}", f"--slow-syncs {self.slow_syncs:g}",
            f"--pause-every {self.pause_every_s:g}", f"--slow-disk-every {self.slow_disk_every_s:g}",
            f"--clock-step-every {self.clock_step_every_s:g}", "--wire" if self.wire_on() else "--no-wire",
        ]
        return " ".join(parts)


class _Link:
    """One-way link from a peer to an address (a TCP connection in links.py)."""

    __slots__ = ("src", "dst", "epoch", "last_at", "open", "stale", "failed_at", "peer_id")

    def __init__(self, src: int, dst: int | None) -> None:
        self.src, self.dst = src, dst
        self.epoch = 0  # bumped when the link breaks: what is in flight is lost
        self.last_at = 0.0  # FIFO: nothing on the link arrives before this
        self.open = False
        self.stale = False  # the receiver died under it: the next send fails
        self.failed_at = -1e9
        self.peer_id: str | None = None  # as links.py: named by the send that opened it


class _Peer:
    def __init__(self, idx: int, name: str, addr: str, seeds: list[str]) -> None:
        self.idx, self.name, self.addr, self.seeds = idx, name, addr, seeds
        self.store = MemoryStore()
        self.core: PeerCore | None = None
        self.up = False
        self.epoch = 0  # bumped at every crash: heap entries of an older life are ignored
        self.syncing = False
        self.in_sync: tuple[list, list] | None = None
        self.pending_writes: list = []
        self.pending_actions: list = []
        self.jobs: dict[str, tuple[int, int]] = {}  # running here: job id -> (attempt, generation)
        self.clients: dict[tuple, int] = {}  # outstanding SUBMIT token -> job number
        self.down_since = 0.0
        self.next_validate_at = 0.0
        self.sent = Counter()
        self.paused_until = 0.0  # stopped (SIGSTOP) until then: its entries wait
        self.slow_until = 0.0  # its disk is slow until then
        self.wall_offset = _WALL_EPOCH_S  # wall = now + this; kept across crashes (it is the machine's clock)


@dataclass
class Report:
    ok: bool = True
    failure: str | None = None
    seed: int = 0
    command: str = ""
    peers: int = 0
    jobs: int = 0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    fault_phase_s: float = 0.0
    converged_after_s: float | None = None
    liveness_bound_s: float = 0.0
    jobs_acked: int = 0
    jobs_final: int = 0
    jobs_done: int = 0
    starts: int = 0
    reexecutions: int = 0
    jobs_run_more_than_once: int = 0
    events: int = 0
    steps: int = 0
    messages: int = 0
    messages_per_peer_s: float = 0.0
    messages_per_peer_period: float = 0.0
    gossip_per_peer_period: float = 0.0
    steady_messages_per_peer_period: float = 0.0
    steady_gossip_per_peer_period: float = 0.0
    messages_by_type: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    crashes: int = 0
    partitions: int = 0
    breaks: int = 0
    pauses: int = 0
    slow_disks: int = 0
    clock_steps: int = 0
    deferred: int = 0  # entries that waited for a paused peer
    imbalance_fault_avg: float = 0.0
    imbalance_liveness_avg: float = 0.0
    imbalance_busy_avg: float = 0.0
    imbalance_max: int = 0
    syncs: int = 0
    submit_retries: int = 0
    trace_hash: str = ""
    wire: bool = True


class Simulation:
    def __init__(self, opts: Options, config: Config | None = None, out=None) -> None:
        self.opts = opts
        self.config = config or Config.simulation()
        self.out = out or sys.stdout
        self.wire = opts.wire_on()
        master = random.Random(opts.seed)
        # Independent streams, each derived from the one seed, so that e.g. a
        # different job mix does not change the network's draws.
        self.net_rng = random.Random(master.getrandbits(64))
        self.fault_rng = random.Random(master.getrandbits(64))
        self.job_rng = random.Random(master.getrandbits(64))
        self.disk_rng = random.Random(master.getrandbits(64))
        self.peer_rng = random.Random(master.getrandbits(64))
        self.client_rng = random.Random(master.getrandbits(64))
        # Drawn last: the streams above are the same as before the nemeses existed.
        self.nemesis_rng = random.Random(master.getrandbits(64))
        self.heap: list = []
        self.serial = 0
        self.now = 0.0
        self.hash = hashlib.sha256()
        self.report = Report(seed=opts.seed, command=opts.command(), peers=opts.peers, jobs=opts.jobs, wire=self.wire)
        addrs = [f"sim:{i + 1}" for i in range(opts.peers)]
        self.peers = [_Peer(i, f"n{i + 1}", addrs[i], [a for a in addrs[:3] if a != addrs[i]]) for i in range(opts.peers)]
        for p in self.peers:
            p.wall_offset = _WALL_EPOCH_S + self.nemesis_rng.uniform(-_WALL_SKEW_S_MAX, _WALL_SKEW_S_MAX)
        self.by_addr = {p.addr: p.idx for p in self.peers}
        self.by_name = {p.name: p.idx for p in self.peers}
        self.links: dict[tuple[int, str], _Link] = {}
        self.link_list: list[_Link] = []
        self.links_to: dict[int, list[_Link]] = {i: [] for i in range(opts.peers)}
        self.links_from: dict[int, list[_Link]] = {i: [] for i in range(opts.peers)}
        self.cut: set[int] | None = None  # the minority side of the current partition
        self.fault_phase = True
        # Clients and jobs.
        self.specs = [self._draw_spec() for _ in range(opts.jobs)]
        self.acked: dict[str, int] = {}  # job id -> job number
        self.acked_job: dict[int, str] = {}  # job number -> job id
        self.home_of: dict[str, int] = {}
        self.final: dict[str, bytes] = {}  # job id -> its home's durable final record
        self.holders: Counter = Counter()  # job id -> durable q/ and x/ keys across all stores
        self.starts_of: Counter = Counter()
        self.gen = 0
        self.tokens = 0
        self.dropped: Counter = Counter()
        self.types: Counter = Counter()
        self.imbalance: list[tuple[bool, int, bool]] = []
        self.converged_at: float | None = None
        self.ack_checks: list[str] = []
        self.membership_full = opts.membership_full()
        # Messages in the second half of the fault phase: past the join burst.
        self.steady_from = opts.duration_s / 2
        self.steady_messages = 0
        self.steady_gossip = 0

    # ------------------------------------------------------------------
    # The heap

    def _push(self, at: float, kind: int, a=None, b=None, c=None) -> None:
        self.serial += 1
        heapq.heappush(self.heap, (at, self.serial, kind, a, b, c))

    def run(self) -> Report:
        wall = time.perf_counter()
        try:
            self._run()
        except InvariantViolation as exc:
            self.report.ok = False
            self.report.failure = f"t={self.now:.6f}s: {exc}"
        self.report.wall_s = time.perf_counter() - wall
        self._finish_report()
        return self.report

    def _run(self) -> None:
        opts, cfg = self.opts, self.config
        for p in self.peers:
            self._push(self.peer_rng.uniform(0, 0.1), _RESTART, p.idx)
        window = max(0.2, 0.6 * opts.duration_s)
        for n in range(opts.jobs):
            self._push(0.15 + self.client_rng.uniform(0, window), _SUBMIT, n)
        if opts.crash_every_s > 0:
            self._push(self.fault_rng.expovariate(1 / opts.crash_every_s), _CRASH)
        if opts.partition_every_s > 0:
            self._push(self.fault_rng.expovariate(1 / opts.partition_every_s), _PARTITION)
        if opts.break_every_s > 0:
            self._push(self.fault_rng.expovariate(1 / opts.break_every_s), _BREAK)
        nem = self.nemesis_rng
        for kind, every in ((_PAUSE, opts.pause_every_s), (_SLOW_DISK, opts.slow_disk_every_s),
                            (_CLOCK_STEP, opts.clock_step_every_s)):
            if every > 0:
                self._push(nem.expovariate(1 / every), kind)
        self._push(_SAMPLE_INTERVAL_S, _SAMPLE)
        self._push(opts.duration_s, _PHASE)
        deadline = opts.duration_s + opts.liveness_s
        heap, peers = self.heap, self.peers
        pop = heapq.heappop
        tick_s = cfg.tick_interval_s
        while heap:
            at, _, kind, a, b, c = pop(heap)
            if at > deadline:
                self.now = deadline
                break
            self.now = at
            self.report.events += 1
            if kind in _PEER_KINDS and peers[a].paused_until > at and peers[a].epoch == b:
                # Stopped: it handles nothing; everything for it waits, in order, until it resumes.
                self.report.deferred += 1
                self._push(peers[a].paused_until, kind, a, b, c)
                continue
            if kind == _TICK:
                peer = peers[a]
                if peer.epoch == b and peer.up:
                    self._step(peer, _TICK_EVENT)
                    self._push(at + tick_s, _TICK, a, b)
            elif kind == _MSG:
                self._deliver(a, b, c)
            elif kind == _EVENT:
                peer = peers[a]
                if peer.epoch == b and peer.up:
                    self._step(peer, c)
            elif kind == _SYNC:
                peer = peers[a]
                if peer.epoch == b and peer.up:
                    self._sync_done(peer)
            elif kind == _JOB:
                peer = peers[a]
                if peer.epoch == b and peer.up:
                    job_id, attempt, gen, code, reason = c
                    if peer.jobs.get(job_id) == (attempt, gen):
                        del peer.jobs[job_id]
                        self._step(peer, JobExited(job_id, attempt, code, reason))
            elif kind == _SUBMIT:
                self._submit(a)
            elif kind == _SAMPLE:
                self._sample()
            elif kind == _RESTART:
                if b is None or b == peers[a].epoch:
                    self._restart(peers[a])
            elif kind == _CRASH:
                self._fault_crash()
            elif kind == _PARTITION:
                self._fault_partition()
            elif kind == _HEAL:
                if self.cut is not None and self.cut is a:
                    self._heal()
            elif kind == _BREAK:
                self._fault_break()
            elif kind == _PHASE:
                self._end_fault_phase()
            elif kind == _PAUSE:
                self._fault_pause()
            elif kind == _SLOW_DISK:
                self._fault_slow_disk()
            elif kind == _CLOCK_STEP:
                self._fault_clock_step()
            if self.converged_at is None and not self.fault_phase and len(self.final) == opts.jobs:
                self.converged_at = self.now
                break
        if self.converged_at is None:
            self._liveness_failure(deadline)

    # ------------------------------------------------------------------
    # One peer's edge (node.py's core loop and committer)

    def _step(self, peer: _Peer, event) -> None:
        core = peer.core
        now = self.now
        core.handle(event, now, now + peer.wall_offset)
        self.report.steps += 1
        if self.opts.trace:
            self.out.write(f"{now!r} {peer.idx} {event!r}\n")
        if self.opts.hash_trace:
            self.hash.update(f"{now!r} {peer.idx} {_digest(event)}\n".encode())
        writes, actions = core.take()
        try:
            core.validate_state()
        except AssertionError as exc:
            raise InvariantViolation(f"{peer.name}: {exc}") from None
        pending = peer.pending_actions
        for action in actions:
            kind = type(action)
            if kind is StartJob:
                self._start_job(peer, action)
            elif kind is KillJob:
                self._kill_job(peer, action)
            elif kind is Log:
                if self.opts.trace:
                    self.out.write(f"{now!r} {peer.idx} log {action.text}\n")
            elif kind is Send and not getattr(action, "wait_sync", True):
                self._send(peer, action)  # membership: never waits behind the disk (executor.core.is_immediate)
            else:
                pending.append(action)
        if writes:
            peer.pending_writes += writes
        if not peer.syncing and (peer.pending_writes or peer.pending_actions):
            self._commit(peer)
        self._check_step(peer, event)

    def _commit(self, peer: _Peer) -> None:
        writes, actions = peer.pending_writes, peer.pending_actions
        peer.pending_writes, peer.pending_actions = [], []
        if writes:
            peer.syncing = True
            peer.in_sync = (writes, actions)
            rng = self.disk_rng
            if self.now < peer.slow_until:
                delay = rng.uniform(*_SLOW_DISK_SYNC_S)  # this peer's disk is slow for a while (a fault)
            elif self.fault_phase and self.opts.slow_syncs > 0 and rng.random() < self.opts.slow_syncs:
                delay = rng.uniform(0.05, 0.5)  # a stalled disk (a fault)
            else:
                delay = rng.uniform(0.0002, 0.002)
            self._push(self.now + delay, _SYNC, peer.idx, peer.epoch)
        else:
            self._carry_out(peer, actions)
            self._flush_ack_checks()

    def _flush_ack_checks(self) -> None:
        for job_id in self.ack_checks:
            self._check_safe(job_id, "just acknowledged")
        self.ack_checks.clear()

    def _sync_done(self, peer: _Peer) -> None:
        writes, actions = peer.in_sync
        peer.in_sync = None
        peer.syncing = False
        self.report.syncs += 1
        durable = peer.store.durable
        touched: dict[bytes, bytes | None] = {}
        for key, _ in writes:
            if key[:2] in _JOB_PREFIXES and key not in touched:
                touched[key] = durable.get(key)
        peer.store.write(writes, sync=True)
        if self.opts.hash_trace:
            self.hash.update(b"".join(k + b"=" + (v if v is not None else b"-") + b";" for k, v in writes))
        self._carry_out(peer, actions)
        self._check_touched(peer, touched)
        self._flush_ack_checks()
        if peer.pending_writes or peer.pending_actions:
            self._commit(peer)

    def _carry_out(self, peer: _Peer, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self._send(peer, action)
            elif kind is Reply or kind is ReplyResult:
                self._reply(peer, action)
            else:
                raise InvariantViolation(f"{peer.name}: unexpected deferred action {action!r}")

    # ------------------------------------------------------------------
    # Jobs (sleep jobs, as executor/runner.py runs them)

    def _draw_spec(self) -> JobSpec:
        rng = self.job_rng
        if rng.random() < self.opts.long_jobs:
            return JobSpec("sleep", "", rng.randint(100, 1000))
        return JobSpec("sleep", "", rng.randint(0, 50))

    def _start_job(self, peer: _Peer, start: StartJob) -> None:
        if start.job_id in peer.jobs:
            raise InvariantViolation(f"{peer.name}: started {start.job_id} attempt {start.attempt} while "
                                     f"attempt {peer.jobs[start.job_id][0]} still runs there")
        if start.job_id not in self.acked and split_job_id(start.job_id)[0] != peer.name:
            raise InvariantViolation(f"{peer.name}: started {start.job_id}, an id never acknowledged")
        self.gen += 1
        peer.jobs[start.job_id] = (start.attempt, self.gen)
        if len(peer.jobs) > peer.core.slots:
            raise InvariantViolation(f"{peer.name}: {len(peer.jobs)} jobs running on {peer.core.slots} slots")
        self.report.starts += 1
        if start.attempt > 1:
            self.report.reexecutions += 1
        self.starts_of[start.job_id] += 1
        run_s = start.spec.sleep_ms / 1000
        if run_s > start.timeout_s:
            result = (start.job_id, start.attempt, self.gen, None, "timeout")
            run_s = start.timeout_s
        else:
            result = (start.job_id, start.attempt, self.gen, 0, None)
        self._push(self.now + run_s, _JOB, peer.idx, peer.epoch, result)

    def _kill_job(self, peer: _Peer, kill: KillJob) -> None:
        running = peer.jobs.get(kill.job_id)
        if running is not None and running[0] == kill.attempt:
            del peer.jobs[kill.job_id]
            self._push(self.now, _EVENT, peer.idx, peer.epoch, JobExited(kill.job_id, kill.attempt, None, "cancelled"))

    # ------------------------------------------------------------------
    # Clients

    def _submit(self, n: int) -> None:
        if n in self.acked_job:
            return
        if self.opts.submit_to == "one":
            peer = self.peers[0]
        else:
            peer = self.peers[self.client_rng.randrange(len(self.peers))]
        if not peer.up:
            # Connection refused: the client tries again shortly (elsewhere, with --submit-to all).
            self.report.submit_retries += 1
            self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n)
            return
        self.tokens += 1
        token = (1 + n % 64, self.tokens)  # (connection, request number), as node.py's tokens
        peer.clients[token] = n
        self._push(self.now + self.net_rng.uniform(0.00005, 0.0005), _EVENT, peer.idx, peer.epoch,
                   ClientRequest(token, Submit(self.specs[n])))

    def _reply(self, peer: _Peer, reply) -> None:
        n = peer.clients.pop(reply.token, None)
        if n is None:
            raise InvariantViolation(f"{peer.name}: reply for a request it never got: {reply!r}")
        data = reply.data if type(reply) is Reply else read_result(peer.store, reply.job_id)
        if not data.startswith(b"OK "):
            self.report.submit_retries += 1
            self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n)
            return
        job_id = data[3:].decode().strip()
        if job_id in self.acked:
            raise InvariantViolation(f"{peer.name}: id {job_id} acknowledged twice "
                                     f"(jobs #{self.acked[job_id]} and #{n})")
        if n in self.acked_job:
            raise InvariantViolation(f"job #{n} acknowledged twice ({self.acked_job[n]}, {job_id})")
        home, _ = split_job_id(job_id)
        if home != peer.name:
            raise InvariantViolation(f"{peer.name} acknowledged {job_id}, an id naming another home")
        self.acked[job_id] = n
        self.acked_job[n] = job_id
        self.home_of[job_id] = peer.idx
        raw = peer.store.durable.get(layout.key(layout.JOB, job_id))
        if raw is None:
            raise InvariantViolation(f"{peer.name} acknowledged {job_id} before its record was durable")
        self._check_spec(peer, job_id, cbor2.loads(raw), "j/")
        # Checked once the batch that carried the ack is fully accounted for.
        self.ack_checks.append(job_id)

    # ------------------------------------------------------------------
    # The network

    def _send(self, peer: _Peer, send: Send) -> None:
        msg = send.message
        self.report.messages += 1
        if self.steady_from <= self.now < self.opts.duration_s:
            self.steady_messages += 1
            if isinstance(msg, GOSSIP_MESSAGES):
                self.steady_gossip += 1
        tname = type(msg).__name__
        self.types[tname] += 1
        peer.sent[tname] += 1
        key = (peer.idx, send.addr)
        link = self.links.get(key)
        dst_idx = self.by_addr.get(send.addr)
        if link is None:
            link = self.links[key] = _Link(peer.idx, dst_idx)
            self.link_list.append(link)
            self.links_from[peer.idx].append(link)
            if dst_idx is not None:
                self.links_to[dst_idx].append(link)
        if self.wire:
            payload = wire.encode(msg)
            if len(payload) > self.config.frame_bytes_max:
                self.dropped["oversize"] += 1
                return
        else:
            payload = msg
        now = self.now
        if not link.open:
            if now - link.failed_at < _RECONNECT_BACKOFF_S:
                self.dropped["backoff"] += 1
                return
            link.open = True
            link.peer_id = send.peer_id
        dst = self.peers[dst_idx] if dst_idx is not None else None
        if dst is None or not dst.up or link.stale or self._is_cut(peer.idx, dst_idx):
            self.dropped["unreachable"] += 1
            self._fail_link(link, self.net_rng.uniform(0.0005, 0.05))
            return
        at = now + self.net_rng.uniform(0.0001, 0.005)
        if at < link.last_at:
            at = link.last_at
        link.last_at = at
        self._push(at, _MSG, link, link.epoch, (peer.epoch, dst.epoch, payload))

    def _fail_link(self, link: _Link, notice_s: float) -> None:
        """The link broke: what is in flight is lost, the sender hears of it
        (if it named the peer when it opened the link, as links.py)."""
        link.epoch += 1
        link.open = False
        link.stale = False
        link.failed_at = self.now
        src = self.peers[link.src]
        if link.peer_id is not None and src.up:
            self._push(self.now + notice_s, _EVENT, src.idx, src.epoch, PeerUnreachable(link.peer_id))

    def _deliver(self, link: _Link, link_epoch: int, c) -> None:
        if link.epoch != link_epoch:
            self.dropped["in-flight"] += 1
            return
        src_epoch, dst_epoch, payload = c
        src, dst = self.peers[link.src], self.peers[link.dst]
        if src.epoch != src_epoch or dst.epoch != dst_epoch or not dst.up:
            self.dropped["in-flight"] += 1
            return
        if dst.paused_until > self.now:
            # TCP takes it into the socket buffer; the stopped peer reads it when it resumes.
            self.report.deferred += 1
            self._push(dst.paused_until, _MSG, link, link_epoch, c)
            return
        if self._is_cut(src.idx, dst.idx):
            self.dropped["partition"] += 1
            self._fail_link(link, self.net_rng.uniform(0.001, 0.2))
            return
        msg = wire.decode(payload) if self.wire else payload
        self._step(dst, PeerMessage(src.name, msg, src.addr))

    def _is_cut(self, a: int, b: int) -> bool:
        cut = self.cut
        return cut is not None and ((a in cut) != (b in cut))

    # ------------------------------------------------------------------
    # Faults

    def _fault_crash(self) -> None:
        if not self.fault_phase:
            return
        rng = self.fault_rng
        self._push(self.now + rng.expovariate(1 / self.opts.crash_every_s), _CRASH)
        up = [p for p in self.peers if p.up]
        down = len(self.peers) - len(up)
        if not up or down >= max(1, len(self.peers) // 3):
            return
        peer = up[rng.randrange(len(up))]
        self._crash(peer)
        # Mostly quick restarts; some stay away past reissue_grace_s so that
        # homes re-issue their jobs.
        if rng.random() < 0.7:
            delay = rng.uniform(0.05, 1.0)
        else:
            delay = rng.uniform(2.0, 6.0)
        self._push(self.now + delay, _RESTART, peer.idx, peer.epoch)

    def _crash(self, peer: _Peer) -> None:
        self.report.crashes += 1
        if self.opts.trace:
            self.out.write(f"{self.now!r} {peer.idx} CRASH\n")
        peer.up = False
        peer.epoch += 1
        peer.down_since = self.now
        peer.paused_until = 0.0  # (a kill -9 of a stopped process: nothing of it resumes)
        peer.slow_until = 0.0
        peer.store.crash()
        peer.core = None
        peer.jobs.clear()
        peer.syncing = False
        peer.in_sync = None
        peer.pending_writes, peer.pending_actions = [], []
        for n in peer.clients.values():  # their connections broke: try again
            self.report.submit_retries += 1
            self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n)
        peer.clients = {}
        for link in self.links_from[peer.idx]:
            link.epoch += 1
            link.open = False
            link.stale = False
            link.last_at = 0.0
        for link in self.links_to[peer.idx]:
            link.epoch += 1
            if link.open:
                link.stale = True

    def _restart(self, peer: _Peer, epoch: int | None = None) -> None:
        if peer.up:
            return
        if self.opts.trace:
            self.out.write(f"{self.now!r} {peer.idx} START\n")
        now = self.now
        snap = layout.start(peer.store, peer.name)
        if snap.peer_id != peer.name:
            raise InvariantViolation(f"{peer.name} restarted as {snap.peer_id}")
        rng = self.peer_rng
        cluster = Cluster(peer.name, peer.addr, snap.incarnation, self.config, random.Random(rng.getrandbits(64)), now)
        peer.core = PeerCore(peer.name, self.config, self.opts.slots, random.Random(rng.getrandbits(64)),
                             snap, now, cluster=cluster, wall=now + peer.wall_offset)
        # As node.py: the join's output waits in the core for the first batch.
        peer.core.handle_join(peer.seeds, snap.peers, now)
        peer.up = True
        self._push(now + rng.uniform(0, self.config.tick_interval_s), _TICK, peer.idx, peer.epoch)

    def _fault_partition(self) -> None:
        if not self.fault_phase:
            return
        rng = self.fault_rng
        self._push(self.now + rng.expovariate(1 / self.opts.partition_every_s), _PARTITION)
        n = len(self.peers)
        if self.cut is not None or n < 2:
            return
        size = rng.randint(1, max(1, (n - 1) // 2))
        self.cut = set(rng.sample(range(n), size))
        self.report.partitions += 1
        if self.opts.trace:
            self.out.write(f"{self.now!r} PARTITION {sorted(self.cut)}\n")
        self._push(self.now + rng.uniform(0.3, 5.0), _HEAL, self.cut)

    def _heal(self) -> None:
        if self.opts.trace and self.cut is not None:
            self.out.write(f"{self.now!r} HEAL\n")
        self.cut = None

    def _fault_break(self) -> None:
        if not self.fault_phase:
            return
        rng = self.fault_rng
        self._push(self.now + rng.expovariate(1 / self.opts.break_every_s), _BREAK)
        if not self.link_list:
            return
        link = self.link_list[rng.randrange(len(self.link_list))]
        if link.open:
            self.report.breaks += 1
            self._fail_link(link, rng.uniform(0.0005, 0.05))

    def _fault_pause(self) -> None:
        """SIGSTOP one live peer for 0.5-4 s: its ticks, job exits, syncs,
        client requests and incoming messages all wait until it resumes (the
        main loop re-queues them), and it sends nothing meanwhile. It then
        handles everything queued, with whatever its timers now say."""
        if not self.fault_phase:
            return
        rng = self.nemesis_rng
        self._push(self.now + rng.expovariate(1 / self.opts.pause_every_s), _PAUSE)
        running = [p for p in self.peers if p.up and p.paused_until <= self.now]
        if not running:
            return
        peer = running[rng.randrange(len(running))]
        peer.paused_until = self.now + rng.uniform(*_PAUSE_S)
        self.report.pauses += 1
        if self.opts.trace:
            self.out.write(f"{self.now!r} {peer.idx} PAUSE until {peer.paused_until!r}\n")

    def _fault_slow_disk(self) -> None:
        """One peer's disk turns slow for 0.5-3 s: each of its syncs takes
        100-500 ms meanwhile."""
        if not self.fault_phase:
            return
        rng = self.nemesis_rng
        self._push(self.now + rng.expovariate(1 / self.opts.slow_disk_every_s), _SLOW_DISK)
        peer = self.peers[rng.randrange(len(self.peers))]
        peer.slow_until = self.now + rng.uniform(*_SLOW_DISK_S)
        self.report.slow_disks += 1
        if self.opts.trace:
            self.out.write(f"{self.now!r} {peer.idx} SLOW DISK until {peer.slow_until!r}\n")

    def _fault_clock_step(self) -> None:
        """One peer's wall clock jumps by ±1-10 minutes (its monotonic clock,
        the simulation's `now`, does not): it shows only in the records'
        wall-clock fields; every deadline must be unaffected."""
        if not self.fault_phase:
            return
        rng = self.nemesis_rng
        self._push(self.now + rng.expovariate(1 / self.opts.clock_step_every_s), _CLOCK_STEP)
        peer = self.peers[rng.randrange(len(self.peers))]
        step = rng.uniform(*_CLOCK_STEP_S) * (1 if rng.random() < 0.5 else -1)
        if abs(peer.wall_offset + step - _WALL_EPOCH_S) > 2 * _CLOCK_STEP_S[1]:
            step = -step  # keep the skew within ±20 minutes
        peer.wall_offset += step
        self.report.clock_steps += 1
        if self.opts.trace:
            self.out.write(f"{self.now!r} {peer.idx} CLOCK STEP {step:+.3f}s\n")

    def _end_fault_phase(self) -> None:
        """Faults stop: every crashed peer restarts, the partition heals."""
        self.fault_phase = False
        self._heal()
        for peer in self.peers:
            if not peer.up:
                self._restart(peer)

    # ------------------------------------------------------------------
    # Invariants

    def _check_step(self, peer: _Peer, event) -> None:
        core = peer.core
        if len(core.running) > core.slots:
            raise InvariantViolation(f"{peer.name}: core runs {len(core.running)} jobs on {core.slots} slots")
        membership = core.cluster.membership
        me = membership.member(peer.name)
        if me is None or me.state is not MemberState.ALIVE:
            raise InvariantViolation(f"{peer.name} believes itself {me.state.value if me else 'unknown'}")
        # validate_state() is O(members): on large runs it is run once per
        # peer per probe period (its ticks) instead of after every step.
        if self.membership_full or (event is _TICK_EVENT and self.now >= peer.next_validate_at):
            peer.next_validate_at = self.now + self.config.gossip.probe_interval_s
            try:
                membership.validate_state()
            except AssertionError as exc:
                raise InvariantViolation(f"{peer.name}: membership state invalid: {exc!r}") from None

    def _check_spec(self, peer: _Peer, job_id: str, d: dict, what: str) -> None:
        spec = self.specs[self.acked[job_id]]
        if d["k"] != spec.kind or d["ms"] != spec.sleep_ms or d["c"] != spec.command:
            raise InvariantViolation(f"{peer.name}: {what}{job_id} holds another job's spec "
                                     f"({d['k']} {d['ms']} ms, submitted {spec.sleep_ms} ms)")

    def _check_touched(self, peer: _Peer, touched: dict[bytes, bytes | None]) -> None:
        """Every job key a durable batch changed: ids known, specs right, a
        final record never changes, and nothing acknowledged is lost. The
        whole batch is accounted for before safety is judged: a batch is atomic."""
        durable = peer.store.durable
        judge = []
        for key, before in touched.items():
            after = durable.get(key)
            if after == before:
                continue
            prefix, job_id = key[:2], key[2:].decode()
            if job_id not in self.acked:
                raise InvariantViolation(f"{peer.name}: durable {key.decode()} for an id never acknowledged")
            if prefix == layout.JOB:
                if after is None:
                    raise InvariantViolation(f"{peer.name}: home record of {job_id} deleted")
                if job_id in self.final:
                    raise InvariantViolation(
                        f"{peer.name}: final record of {job_id} changed: {cbor2.loads(self.final[job_id])} -> "
                        f"{cbor2.loads(after)}")
                d = cbor2.loads(after)
                self._check_spec(peer, job_id, d, "j/")
                if d["s"] in _FINAL_STATES:
                    self.final[job_id] = after
                    if d["s"] == "done":
                        self.report.jobs_done += 1
                judge.append((job_id, f"{peer.name} rewrote its record"))
            elif before is None:
                self.holders[job_id] += 1
                if prefix == layout.HELD:
                    self._check_spec(peer, job_id, cbor2.loads(after), "q/")
            elif after is None:
                self.holders[job_id] -= 1
                judge.append((job_id, f"{peer.name} deleted {key.decode()}"))
        for job_id, why in judge:
            self._check_safe(job_id, why)

    def _check_safe(self, job_id: str, why: str) -> None:
        """An acknowledged job is safe while its home's durable record is final,
        or some store (of a live or a crashed peer) durably holds it to run
        (q/) or holds its result for the home (x/)."""
        if job_id in self.final or self.holders[job_id] > 0:
            return
        home = self.peers[self.home_of[job_id]]
        raw = home.store.durable.get(layout.key(layout.JOB, job_id))
        rec = cbor2.loads(raw) if raw is not None else None
        state = f"{rec['s']} attempt {rec['a']} at {rec['x']}" if rec else "no record"
        raise InvariantViolation(f"acknowledged job {job_id} lost ({why}): home {home.name} says {state}; "
                                 f"no store holds it or its result")

    def _liveness_failure(self, deadline: float) -> None:
        missing = [n for n in range(self.opts.jobs) if n not in self.acked_job]
        if missing:
            raise InvariantViolation(f"liveness: {len(missing)} submissions never acknowledged by t={deadline:g}s "
                                     f"(e.g. job #{missing[0]})")
        open_ids = [j for j in self.acked if j not in self.final]
        examples = []
        for job_id in open_ids[:5]:
            home = self.peers[self.home_of[job_id]]
            rec = cbor2.loads(home.store.durable[layout.key(layout.JOB, job_id)])
            where = [p.name for p in self.peers if layout.key(layout.HELD, job_id) in p.store.durable]
            examples.append(f"{job_id} {rec['s']} attempt {rec['a']} executor {rec['x'] or '-'} held by {where}")
        raise InvariantViolation(
            f"liveness: {len(open_ids)} acknowledged jobs not final {self.opts.liveness_s:g}s after faults "
            f"stopped: " + "; ".join(examples))

    # ------------------------------------------------------------------
    # Measurements

    def _sample(self) -> None:
        loads = [len(p.core.queue) + len(p.core.running) for p in self.peers if p.up]
        if loads:
            spread = max(loads) - min(loads)
            self.imbalance.append((self.fault_phase, spread, sum(loads) > 0))
        self._push(self.now + _SAMPLE_INTERVAL_S, _SAMPLE)

    def _finish_report(self) -> None:
        r, opts = self.report, self.opts
        r.virtual_s = self.now
        r.fault_phase_s = min(opts.duration_s, self.now)
        r.liveness_bound_s = opts.liveness_s
        if self.converged_at is not None:
            r.converged_after_s = self.converged_at - opts.duration_s
        r.jobs_acked = len(self.acked)
        r.jobs_final = len(self.final)
        r.jobs_run_more_than_once = sum(1 for c in self.starts_of.values() if c > 1)
        if self.now > 0 and self.peers:
            r.messages_per_peer_s = r.messages / len(self.peers) / self.now
            period = self.config.gossip.probe_interval_s
            r.messages_per_peer_period = r.messages_per_peer_s * period
            gossip_names = {t.__name__ for t in GOSSIP_MESSAGES}
            gossip_msgs = sum(v for k, v in self.types.items() if k in gossip_names)
            r.gossip_per_peer_period = gossip_msgs / len(self.peers) / self.now * period
        steady_s = min(self.now, opts.duration_s) - self.steady_from
        if steady_s > 0 and self.peers:
            per = self.config.gossip.probe_interval_s / len(self.peers) / steady_s
            r.steady_messages_per_peer_period = self.steady_messages * per
            r.steady_gossip_per_peer_period = self.steady_gossip * per
        r.messages_by_type = dict(sorted(self.types.items()))
        r.dropped = dict(sorted(self.dropped.items()))

        def avg(xs):
            return sum(xs) / len(xs) if xs else 0.0

        r.imbalance_fault_avg = avg([s for f, s, _ in self.imbalance if f])
        r.imbalance_liveness_avg = avg([s for f, s, _ in self.imbalance if not f])
        r.imbalance_busy_avg = avg([s for _, s, busy in self.imbalance if busy])
        r.imbalance_max = max((s for _, s, _ in self.imbalance), default=0)
        r.trace_hash = self.hash.hexdigest() if opts.hash_trace else ""


def _digest(event) -> str:
    """What the trace hash takes of an event delivered to a core: all of it,
    except a gossip message's piggybacked updates (their effects show up in
    the durable writes and in every later event; their repr was a tenth of
    the run time at 200 peers)."""
    if type(event) is PeerMessage:
        msg = event.message
        if isinstance(msg, GOSSIP_MESSAGES):
            return f"{event.sender} {type(msg).__name__} {msg.from_incarnation} {getattr(msg, 'seq', '')}"
    elif event is _TICK_EVENT:
        return "Tick"
    return repr(event)


def simulate(opts: Options, config: Config | None = None, out=None) -> Report:
    return Simulation(opts, config, out).run()


# ----------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=5)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--seed", type=int, default=None, help="default: a random seed (printed)")
    p.add_argument("--slots", type=int, default=2, help="job slots per peer")
    p.add_argument("--submit-to", choices=["one", "all"], default="all",
                   help="one: every client submits to the first peer; all: to a random peer")
    p.add_argument("--crash-every", type=float, default=1.5, metavar="SECONDS",
                   help="mean virtual seconds between crashes (0: none)")
    p.add_argument("--partition-every", type=float, default=3.0, metavar="SECONDS",
                   help="mean virtual seconds between partitions (0: none)")
    p.add_argument("--break-every", type=float, default=0.5, metavar="SECONDS",
                   help="mean virtual seconds between link breaks (0: none)")
    p.add_argument("--duration", type=float, default=6.0, metavar="SECONDS", help="length of the fault phase")
    p.add_argument("--liveness-s", type=float, default=60.0, metavar="SECONDS",
                   help="bound for every acknowledged job to be final after faults stop")
    p.add_argument("--slow-syncs", type=float, default=0.01, metavar="SHARE",
                   help="share of fsyncs that stall 50-500 ms instead of 0.2-2 ms")
    p.add_argument("--long-jobs", type=float, default=0.05, help="share of jobs sleeping 100-1000 ms")
    p.add_argument("--pause-every", type=float, default=3.0, metavar="SECONDS",
                   help="mean virtual seconds between pauses: a peer handles nothing for 0.5-4 s (0: none)")
    p.add_argument("--slow-disk-every", type=float, default=3.0, metavar="SECONDS",
                   help="mean virtual seconds between a peer's disk turning slow (syncs of 100-500 ms for "
                        "0.5-3 s; 0: none)")
    p.add_argument("--clock-step-every", type=float, default=1.5, metavar="SECONDS",
                   help="mean virtual seconds between wall-clock steps of ±1-10 min of a peer (0: none)")
    p.add_argument("--wire", dest="wire", action="store_true", default=None,
                   help="encode and decode every message with gossip.wire (default when peers*jobs <= 200000)")
    p.add_argument("--no-wire", dest="wire", action="store_false")
    p.add_argument("--check-membership", choices=["auto", "full", "period"], default="auto",
                   help="Membership.validate_state() after every step (full) or once per peer per probe "
                        "period (period); auto: full up to 50 peers")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trace", action="store_true", help="print every event delivered to a core")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    opts = Options(
        peers=args.peers, jobs=args.jobs, seed=seed, slots=args.slots, submit_to=args.submit_to,
        crash_every_s=args.crash_every, partition_every_s=args.partition_every, break_every_s=args.break_every,
        duration_s=args.duration, liveness_s=args.liveness_s, wire=args.wire, long_jobs=args.long_jobs, slow_syncs=args.slow_syncs,
        pause_every_s=args.pause_every, slow_disk_every_s=args.slow_disk_every,
        clock_step_every_s=args.clock_step_every,
        trace=args.trace, check_membership=args.check_membership,
    )
    report = simulate(opts)
    if args.json:
        print(json.dumps(report.__dict__, sort_keys=True))
    else:
        print(format_report(report))
    if not report.ok:
        print(f"FAILED seed={report.seed}: {report.failure}", file=sys.stderr)
        print(f"replay: {report.command}", file=sys.stderr)
        return 1
    return 0


def format_report(r: Report) -> str:
    conv = f"{r.converged_after_s:.2f}" if r.converged_after_s is not None else "-"
    lines = [
        f"seed {r.seed}: {'OK' if r.ok else 'FAILED: ' + str(r.failure)}",
        f"  peers {r.peers}, jobs {r.jobs} (acked {r.jobs_acked}, final {r.jobs_final}, done {r.jobs_done})",
        f"  virtual {r.virtual_s:.2f} s (faults {r.fault_phase_s:g} s, converged {conv} s after, bound "
        f"{r.liveness_bound_s:g} s); wall {r.wall_s:.2f} s",
        f"  faults: {r.crashes} crashes, {r.partitions} partitions, {r.breaks} link breaks, {r.pauses} pauses "
        f"({r.deferred} entries waited), {r.slow_disks} slow disks, {r.clock_steps} wall-clock steps",
        f"  starts {r.starts}, re-executions (attempt > 1) {r.reexecutions}, "
        f"jobs run more than once {r.jobs_run_more_than_once}",
        f"  events {r.events}, core steps {r.steps}, syncs {r.syncs}, submit retries {r.submit_retries}",
        f"  messages {r.messages}: {r.messages_per_peer_s:.1f}/peer/s, {r.messages_per_peer_period:.2f}/peer/period "
        f"(gossip {r.gossip_per_peer_period:.2f}); second half of the fault phase: "
        f"{r.steady_messages_per_peer_period:.2f}/peer/period (gossip {r.steady_gossip_per_peer_period:.2f})",
        f"  dropped {r.dropped}",
        f"  imbalance (max-min of queued+running, alive peers): fault phase avg {r.imbalance_fault_avg:.2f}, "
        f"liveness avg {r.imbalance_liveness_avg:.2f}, while busy {r.imbalance_busy_avg:.2f}, max {r.imbalance_max}",
        f"  wire codec {'on' if r.wire else 'off'}; trace {r.trace_hash}",
    ]
    if not r.ok:
        lines.append(f"  replay: {r.command}")
    return "\n".join(lines)
if __name__ == "__main__":
    sys.exit(main())
