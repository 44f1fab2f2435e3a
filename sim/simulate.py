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
(see `_check_touched`, `_check_safe`, `_check_step` in
sim/simulation/invariants.py); the liveness phase then
stops all faults and requires every acknowledged job to be final at its home
within `--liveness-s` virtual seconds. Everything random comes from one
`random.Random(seed)`; the trace hash (sha256 over every event delivered to a
core, with its virtual time and peer) proves that a seed replays exactly.

The simulation itself lives in sim/simulation/, one module per concern (its
__init__ lists them); this module is its command line, and keeps the names
other code imports from `sim.simulate`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from sim.simulation.base import _WALL_EPOCH_S, InvariantViolation, Options
from sim.simulation.report import Report, format_report
from sim.simulation.world import Simulation, simulate

__all__ = [
    "_WALL_EPOCH_S",
    "InvariantViolation",
    "Options",
    "Report",
    "Simulation",
    "format_report",
    "main",
    "simulate",
]

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
                   help="Membership's and PeerCore's validate_state() after every step (full) or once per "
                        "peer per probe period (period); auto: full up to 50 peers")
    p.add_argument("--job-model", action="store_true",
                   help="draw SUBMIT's options too: priorities, retries (some tries fail), --delay/--at, "
                        "dependencies on earlier jobs (sim/simulation/jobmodel.py)")
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
        trace=args.trace, check_membership=args.check_membership, job_model=args.job_model,
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


if __name__ == "__main__":
    sys.exit(main())
