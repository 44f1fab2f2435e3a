"""The nemeses of the fault phase, each drawn from its seeded stream: crashes
(that lose unsynced writes) and restarts, partitions and their healing, link
breaks, pauses (SIGSTOP), slow disks and wall-clock steps. When the phase
ends every fault stops: crashed peers restart and the partition heals.
"""

from __future__ import annotations

import random

from executor.core import PeerCore
from executor.core.cluster import Cluster
from sim.simulation.base import (
    _BREAK,
    _CATCH_UP,
    _CLOCK_STEP,
    _CLOCK_STEP_S,
    _CRASH,
    _HEAL,
    _PARTITION,
    _PAUSE,
    _PAUSE_S,
    _RESTART,
    _SLOW_DISK,
    _SLOW_DISK_S,
    _SUBMIT,
    _TICK,
    _WALL_EPOCH_S,
    InvariantViolation,
    _Peer,
)
from sim.simulation.jobmodel import _CATCH_UP_EVERY_S
from storage import layout


class FaultsMixin:
    """Crashes, restarts and the gray failures of the fault phase."""

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
            if type(n) is tuple:  # (--job-model) a CANCEL: (job number, verb)
                self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, *n)
            else:
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
        peer.wall_high = max(peer.wall_high, self.now + peer.wall_offset)
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
        if self.opts.job_model:
            self._push(self.now + _CATCH_UP_EVERY_S, _CATCH_UP)

