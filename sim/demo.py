"""`python -m sim demo`: the mission, watched live in about fifteen seconds.

Starts three peers on loopback, submits a batch of shell jobs to ONE of them,
prints every peer's load as it spreads across the cluster, kills -9 one of the
peers that holds work and restarts it at once, and ends by checking every
acknowledged job at its home: finished, exactly one result, output its own.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from executor.client import Client
from sim.bench import peer_processes, restart_peer

_BAR_WIDTH = 24


def _self_line(addr: str) -> dict[str, str] | None:
    try:
        with Client(addr, timeout_s=1) as c:
            line = next(line for line in c.peers() if line.endswith(" self"))
    except (OSError, StopIteration, ValueError):
        return None
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def _render(names: list[str], addrs: list[str], t: float, down: set[str]) -> str:
    cells = []
    for name, addr in zip(names, addrs):
        info = None if name in down else _self_line(addr)
        if info is None:
            cells.append(f"{name} {'(killed)':<{_BAR_WIDTH + 12}}")
            continue
        q, r = int(info["queued"]), int(info["running"])
        bar = ("#" * r + "=" * q)[:_BAR_WIDTH]
        cells.append(f"{name} [{bar:<{_BAR_WIDTH}}] q={q:<3d} r={r}")
    return f"t={t:5.1f}s  " + "  ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim demo", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--job-s", type=float, default=1.0, help="each job is `sleep JOB_S; echo <n>`")
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args(argv)
    names = [f"p{i + 1}" for i in range(args.peers)]
    print(f"starting {args.peers} peers on loopback ({args.slots} slots each)...", flush=True)
    with peer_processes(args.peers, slots=args.slots) as (addrs, procs):
        time.sleep(1.0)
        with Client(addrs[0]) as c:
            print("membership as p1 sees it:")
            for line in c.peers():
                print("   ", line)
            commands = [f"SUBMIT sleep {args.job_s}; echo job-{i}" for i in range(args.jobs)]
            ids = c.submit_many(commands)
        expected = {job: f"job-{i}\n".encode() for i, job in enumerate(ids)}
        print(f"submitted {len(ids)} jobs to p1 (each acknowledged only once durable); watching the load spread:")
        start = time.monotonic()
        down: set[str] = set()
        killed = False
        ideal = args.jobs * args.job_s / (args.peers * args.slots)
        while time.monotonic() - start < 10 * ideal + 20:
            t = time.monotonic() - start
            print(_render(names, addrs, t, down), flush=True)
            if not killed and t > ideal / 3:
                victim = max(range(1, args.peers), key=lambda i: int((_self_line(addrs[i]) or {}).get("queued", 0)))
                procs[victim].kill()
                procs[victim].wait()
                down.add(names[victim])
                print(f"  >>> kill -9 {names[victim]} (it holds jobs stolen from p1); restarting it at once", flush=True)
                killed = True
                threading.Timer(0.3, lambda v=victim: (restart_peer(procs, v), down.discard(names[v]))).start()
            with Client(addrs[0]) as c:
                if all(s.final for s in c.list(len(ids))):
                    break
            time.sleep(0.5)
        print(_render(names, addrs, time.monotonic() - start, down), flush=True)
        return _check(addrs[0], expected, time.monotonic() - start, ideal)


def _check(home: str, expected: dict[str, bytes], elapsed: float, ideal: float) -> int:
    lost, wrong, ran_on, reexecuted = [], [], {}, 0
    with Client(home) as c:
        for job, output in expected.items():
            status = c.wait(job, 60)
            if status.state != "done":
                lost.append(job)
                continue
            if c.result(job).stdout != output:
                wrong.append(job)
            ran_on[status.fields["executor"]] = ran_on.get(status.fields["executor"], 0) + 1
            reexecuted += int(status.fields["attempt"]) > 1
        records = len(c.list(len(expected)))
    print(f"\nchecked {len(expected)} acknowledged jobs at their home peer p1 in {elapsed:.1f}s (ideal {ideal:.1f}s):")
    print(f"  lost {len(lost)}   wrong output {len(wrong)}   records {records}   re-executed after the kill {reexecuted}")
    print("  ran on: " + ", ".join(f"{name} {n}" for name, n in sorted(ran_on.items())))
    ok = not lost and not wrong and records == len(expected)
    print("  OK: nothing acknowledged was lost" if ok else "  FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
