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

The harness lives in sim/chaos/, one module per concern (its __init__ lists
them); this module is its command line, and keeps the names other code
imports from `sim.cluster`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import trio

from sim import nemesis
from sim.chaos.procs import (
    PeerProc,
    ProcessCluster,
    _live_clusters,
    _say,
    is_interrupt,
    request_many,
)
from sim.chaos.report import (
    _nemesis_report,
    _print_report,
    findings_lines,
    nemesis_lines,
    verdict_lines,
)
from sim.chaos.run import Outcome, run
from sim.chaos.workload import Record, Workload

__all__ = [
    "Outcome",
    "PeerProc",
    "ProcessCluster",
    "Record",
    "Workload",
    "_nemesis_report",
    "build_parser",
    "findings_lines",
    "is_interrupt",
    "main",
    "nemesis_lines",
    "request_many",
    "run",
    "verdict_lines",
]

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
    p.add_argument("--job-model", action="store_true",
                   help="tagged shell jobs with SUBMIT's options: priorities, retries (the first try fails), "
                        "delays, dependencies; the checker knows each (sim/chaos/jobmodel.py)")
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
