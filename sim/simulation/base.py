"""What every part of the simulation shares: the kinds of heap entries, the
bounds of its faults, a run's Options, the invariant error and one simulated
peer. Kept apart so that the mixins of `world.Simulation` import one module,
not each other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from executor.core import PeerCore, Tick
from storage import layout
from storage.store import MemoryStore

# Heap entry kinds. An entry is (time, serial, kind, a, b, c); the serial
# breaks ties in insertion order, which keeps links FIFO and runs deterministic.
(_EVENT, _TICK, _SYNC, _MSG, _JOB, _SUBMIT, _CRASH, _RESTART, _PARTITION, _HEAL, _BREAK, _SAMPLE, _PHASE, _PAUSE,
 _SLOW_DISK, _CLOCK_STEP, _CATCH_UP) = range(17)
# Entries a paused peer would handle: they wait (in order) until it resumes.
_PEER_KINDS = frozenset((_EVENT, _TICK, _SYNC, _JOB))

_TICK_EVENT = Tick()
_SAMPLE_INTERVAL_S = 0.05  # load imbalance sampling period
_JOB_PREFIXES = (layout.JOB, layout.HELD, layout.OUTBOX)
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
    check_membership: str = "auto"  # full: both validate_state()s every step; period: once per peer per probe period

    def membership_full(self) -> bool:
        return self.check_membership == "full" or (self.check_membership == "auto" and self.peers <= 50)
    hash_trace: bool = True
    job_model: bool = False  # SUBMIT's options (sim/simulation/jobmodel.py); off: the trace is as before them

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
        if self.job_model:
            parts.append("--job-model")
        return " ".join(parts)


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
        # The highest wall time this peer's clock has shown before its
        # latest step (an upper bound on what its core has seen: with
        # `now + wall_offset` it bounds the wall at any moment).
        self.wall_high = 0.0
