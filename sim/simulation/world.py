"""The Simulation: one seeded random stream per concern, the event heap and
the main loop that hands each entry to its concern (the mixins: edge,
workload, network, faults, invariants, report). Everything random comes from
the one seed, and the heap's serial breaks ties in insertion order, so a seed
replays exactly.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import sys
import time
import traceback
from collections import Counter

from executor.config import Config
from executor.core import JobExited
from sim.simulation.base import (
    _BREAK,
    _CATCH_UP,
    _CLOCK_STEP,
    _CRASH,
    _EVENT,
    _HEAL,
    _JOB,
    _MSG,
    _PARTITION,
    _PAUSE,
    _PEER_KINDS,
    _PHASE,
    _RESTART,
    _SAMPLE,
    _SAMPLE_INTERVAL_S,
    _SLOW_DISK,
    _SUBMIT,
    _SYNC,
    _TICK,
    _TICK_EVENT,
    _WALL_EPOCH_S,
    _WALL_SKEW_S_MAX,
    InvariantViolation,
    Options,
    _Peer,
)
from sim.simulation.edge import EdgeMixin
from sim.simulation.faults import FaultsMixin
from sim.simulation.invariants import InvariantsMixin
from sim.simulation.jobmodel import JobModelMixin
from sim.simulation.jobmodel_checks import JobModelChecksMixin
from sim.simulation.jobmodel_periodic import JobModelPeriodicMixin
from sim.simulation.network import NetworkMixin, _Link
from sim.simulation.report import MeasureMixin, Report
from sim.simulation.workload import WorkloadMixin


class Simulation(EdgeMixin, WorkloadMixin, NetworkMixin, FaultsMixin, InvariantsMixin, JobModelMixin, JobModelChecksMixin,
                 JobModelPeriodicMixin, MeasureMixin):
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
        self.model_started: list[int] = []
        self.model_parent: dict[str, int] = {}  # (--job-model) acknowledged arrays -> their job number
        self.final_target = opts.jobs  # records that end final: a job each, an array's elements, periodic runs
        self.model_periodic: dict[str, int] = {}  # (--job-model) acknowledged periodic jobs -> their job number
        self.model_periodic_open = 0  # (--job-model) periodic jobs whose CANCEL is not acknowledged yet
        if opts.job_model:  # drawn after every other stream: theirs stay as they were
            self._init_job_model(random.Random(master.getrandbits(64)))
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
        if opts.job_model:
            for n in range(opts.jobs):
                self._draw_model(n)
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
        except Exception as exc:  # noqa: BLE001 -- a core (or the simulation) raised: a failure with its seed, as any other
            where = " <- ".join(f"{f.filename.rpartition('/')[2]}:{f.lineno} {f.name}"
                                for f in reversed(traceback.extract_tb(exc.__traceback__)[-4:]))
            self.report.ok = False
            self.report.failure = f"t={self.now:.6f}s: {type(exc).__name__}: {exc} (at {where})"
        self.report.wall_s = time.perf_counter() - wall
        self._finish_report()
        return self.report

    def _run(self) -> None:
        opts, cfg = self.opts, self.config
        self._schedule()
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
            # The peers' own entries are handled inline: they are nearly all of
            # a run's events (a method call each is measurable at 200 peers).
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
            else:
                self._handle_control(kind, a, b)
            if self.converged_at is None and not self.fault_phase and len(self.final) == self.final_target \
                    and not self.model_periodic_open:
                self.converged_at = self.now
                break
        if self.converged_at is None:
            self._liveness_failure(deadline)
        if opts.job_model:
            self._model_verdict()

    def _schedule(self) -> None:
        """The first entries: every peer's start, every submission, the first
        of each fault, the sampler and the end of the fault phase."""
        opts = self.opts
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

    def _handle_control(self, kind: int, a, b) -> None:
        """The entries that belong to no one peer's edge: clients, the
        sampler, restarts and the nemeses."""
        if kind == _SUBMIT:
            if b is None:
                self._submit(a)
            else:
                self._model_cancel(a)  # (--job-model) a periodic job's CANCEL
        elif kind == _SAMPLE:
            self._sample()
        elif kind == _RESTART:
            if b is None or b == self.peers[a].epoch:
                self._restart(self.peers[a])
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
        elif kind == _CATCH_UP:
            self._model_catch_up()



def simulate(opts: Options, config: Config | None = None, out=None) -> Report:
    return Simulation(opts, config, out).run()
