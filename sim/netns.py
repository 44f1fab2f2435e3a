"""`python -m sim partition`: real peers in separate network namespaces, with
their links cut and healed while jobs run.

    sudo python -m sim partition --peers 3 --jobs 600 --job 'sleep 0.1' \\
        --rate 60 --cut-every 3 --cut-for 5 --seed 1

One network namespace per peer, one Linux bridge in the root namespace, one
veth pair per peer (`eth0` inside, the other end on the bridge). Addresses are
from 198.18.0.0/15 (RFC 2544, benchmarking: never routed), one free /24 per
run; the harness, in the root namespace, has .254 on the bridge. A cut takes a
seeded-random minority of peers off the bridge (`ip link set <veth> down`):
they reach nobody and nobody reaches them, the harness included. A heal puts
them back. Meanwhile the load generator of sim/cluster.py submits at a paced
rate, and at the end sim/checker.py checks everything every client was told.
See docs/partitions.md.

It needs root, `ip` (iproute2), network namespaces, veth and bridge support.
Where any is missing it prints one line saying which, and exits 0 (`--json`:
`{"skipped": "<reason>"}`). Everything it creates is named `pj<pid>-<i>`
(namespaces), `pj<pid>v<i>` (veths) and `pjbr<pid>` (the bridge), and is
removed on every way out: finally, atexit, SIGTERM/SIGHUP. Leftovers of an
earlier run are removed only when the run's pid is dead.

The harness lives in sim/partition/, one module per concern (its __init__
lists them); this module is its command line, and keeps the names other code
imports from `sim.netns`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile

import trio

from sim.chaos.procs import is_interrupt
from sim.partition.net import (
    NETWORK,
    PORT,
    Net,
    Unavailable,
    _our_links,
    _our_namespaces,
    _say,
    enter_netns,
    in_netns,
    remove_leftovers,
    unavailable_reason,
)
from sim.partition.report import Cut, _print_report, cut_timings
from sim.partition.run import (
    Observer,
    _live_clusters,
    _on_signal,
    _stop,
    peer_security,
    run,
)

__all__ = [
    "NETWORK",
    "PORT",
    "Cut",
    "Net",
    "Observer",
    "Unavailable",
    "_our_links",
    "_our_namespaces",
    "build_parser",
    "cut_timings",
    "enter_netns",
    "in_netns",
    "main",
    "peer_security",
    "remove_leftovers",
    "run",
    "unavailable_reason",
]



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim partition", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=3, help="peers, one namespace each (default 3)")
    p.add_argument("--slots", type=int, default=2, help="slots of each peer (default 2)")
    p.add_argument("--jobs", type=int, default=600, help="submissions (default 600)")
    p.add_argument("--job", default="sleep 0.1", help="an integer: an in-peer sleep of that many ms; otherwise a "
                                                       "shell command, run as '<command>; echo <n>' (default 'sleep 0.1')")
    p.add_argument("--rate", type=float, default=60.0, help="submissions per second, all clients together "
                                                            "(0: as fast as they go; default 60)")
    p.add_argument("--clients", type=int, default=6, help="client connections, spread over the peers (default 6)")
    p.add_argument("--in-flight", type=int, default=4, help="pipelined submissions per client (default 4)")
    p.add_argument("--reply-timeout", type=float, default=1.0,
                   help="a client with no reply for this long counts its connection broken (default 1)")
    p.add_argument("--cut-every", type=float, default=3.0,
                   help="mean seconds from the cluster healed (all views alive) to the next cut, ±25%% (default 3)")
    p.add_argument("--cut-for", type=float, default=5.0, help="seconds a cut lasts (0: no cuts; default 5)")
    p.add_argument("--cut-size", type=int, default=0, help="peers cut off each time (0: random minority)")
    p.add_argument("--min-cuts", type=int, default=1, help="keep cutting after the work is done until this many (default 1)")
    p.add_argument("--heal-timeout", type=float, default=60.0,
                   help="after the work, the views must all show every peer alive within this (default 60)")
    p.add_argument("--seed", type=int, default=1, help="seeds which peers are cut and when")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on the workload after this many seconds")
    p.add_argument("--workdir", default=None, help="directory for data dirs and logs (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir even when the run passes")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="peers log every job event")
    return p


def _skip(args, reason: str) -> int:
    print(f"partition: cannot run here: {reason}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"skipped": reason}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.peers < 2 or args.jobs < 0 or args.slots < 1 or args.clients < 1 or args.in_flight < 1 \
            or args.peers > 250 or args.cut_for < 0 or args.cut_every <= 0:
        print("partition: --peers must be 2..250, --slots/--clients/--in-flight >= 1, --jobs >= 0, --cut-for >= 0, "
              "--cut-every > 0", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        return _skip(args, reason)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        workdir, made = args.workdir, False
    else:
        workdir, made = tempfile.mkdtemp(prefix="peerjobs-partition-"), True
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    net = Net(args.peers)
    ok = False
    try:
        try:
            net.create()
        except Unavailable as exc:
            ok = True  # nothing ran: nothing to keep
            return _skip(args, str(exc))
        outcome = trio.run(run, args, workdir, net)
        ok = outcome.ok
        _print_report(outcome.report)
        if args.json:
            print(json.dumps(outcome.report), flush=True)
    except BaseException as exc:
        if not is_interrupt(exc):
            raise
        _say("interrupted; every peer stopped, namespaces and bridge removed")
        return 130
    finally:
        for cluster in list(_live_clusters):
            _stop(cluster)
        net.destroy()
        for s, h in old.items():
            signal.signal(s, h)
        if not ok or args.keep:
            _say(f"work dir kept (peer logs p<i>.log, data dirs p<i>/): {workdir}")
        elif made:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
