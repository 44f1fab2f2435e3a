"""`python -m sim demo`: the mission, watched live in about fifteen seconds.

Starts one peer on loopback and submits a batch of shell jobs to it, so the
first frame shows every job on the one peer it was submitted to; then starts
the other peers, which join it and steal, and prints every peer's load as it
spreads across the cluster; kills -9 one of the peers that holds work and
restarts it at once; and ends by checking every acknowledged job at its home:
finished, exactly one result, output its own.

Why the other peers start after the batch is in: with every peer up, the
idle ones steal within milliseconds of the first submissions, faster than any
frame can show, and the moment "all the work sits on one peer" would never be
on screen. A peer joining a busy cluster is the same stealing, watched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from executor.client import Client
from executor.client.cli_common import plural
from sim.bench import free_port, restart_peer, stop_peers, wait_listening

_BAR_WIDTH = 24
_FRAME_S = 0.5  # between two frames
_LISTEN_WAIT_S = 20.0  # for the first peer to listen before the batch is submitted
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _cluster(count: int, slots: int):
    """`count` peers' commands, started on demand (`start(i)`, which does not
    wait for the peer to listen); every one started is stopped on exit."""
    tmp = tempfile.mkdtemp(prefix="peerjobs-demo-")
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    procs: list[subprocess.Popen | None] = [None] * count

    def start(i: int) -> None:
        cmd = [sys.executable, "-m", "executor.client.cli", "node", "--data", os.path.join(tmp, f"p{i + 1}"),
               "--listen", addrs[i], "--name", f"p{i + 1}", "--slots", str(slots)]
        if i > 0:
            cmd += ["--join", addrs[0]]
        log_path = os.path.join(tmp, f"p{i + 1}.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=_ROOT, stdout=log, stderr=log)
        proc.log_path, proc.port = log_path, int(addrs[i].rsplit(":", 1)[1])  # what restart_peer needs
        procs[i] = proc

    try:
        yield addrs, procs, start
    finally:
        stop_peers(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def _self_line(addr: str) -> dict[str, str] | None:
    try:
        with Client(addr, timeout_s=1) as c:
            line = next(line for line in c.peers() if line.endswith(" self"))
    except (OSError, StopIteration, ValueError):
        return None
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def _render(names: list[str], addrs: list[str], t: float, labels: dict[str, str]) -> tuple[str, dict[str, int]]:
    """One frame, and each answering peer's queued jobs. `labels`: what to
    show for a peer that does not answer (not started, starting, killed)."""
    cells, queued = [], {}
    for name, addr in zip(names, addrs):
        info = None if labels.get(name) in ("not started", "killed") else _self_line(addr)
        if info is None:
            label = f"({labels.get(name, 'starting')})"
            cells.append(f"{name} {label:<{_BAR_WIDTH + 12}}")
            continue
        q, r = int(info["queued"]), int(info["running"])
        queued[name] = q
        bar = ("#" * r + "=" * q)[:_BAR_WIDTH]
        cells.append(f"{name} [{bar:<{_BAR_WIDTH}}] q={q:<3d} r={r}")
    return (f"t={t:5.1f}s  " + "  ".join(cells)).rstrip(), queued


def _others(names: list[str]) -> str:
    rest = names[1:]
    return rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim demo", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--job-s", type=float, default=1.0, help="each job is `sleep JOB_S; echo <n>`")
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args(argv)
    if args.peers < 2 or not 1 <= args.jobs <= 1000:
        parser.error("--peers must be at least 2 (the load spreads between peers) and --jobs from 1 to 1000")
    names = [f"p{i + 1}" for i in range(args.peers)]
    labels = {name: "not started" for name in names[1:]}
    print(f"starting p1 on loopback ({args.slots} slots)...", flush=True)
    with _cluster(args.peers, args.slots) as (addrs, procs, start):
        start(0)
        wait_listening(procs[0].port, procs[0], _LISTEN_WAIT_S)
        with Client(addrs[0]) as c:
            ids = c.submit_many([f"SUBMIT sleep {args.job_s:g}; echo job-{i}" for i in range(args.jobs)])
        expected = {job: f"job-{i}\n".encode() for i, job in enumerate(ids)}
        print(f"submitted {plural(len(ids), 'job')} to p1 (each acknowledged only once durable)")
        print(f"legend: # a running job, = a queued job (a bar shows at most {_BAR_WIDTH})")
        start_t = time.monotonic()
        print(_render(names, addrs, 0.0, labels)[0], flush=True)
        for i in range(1, args.peers):
            start(i)
            labels.pop(names[i])
        print(f"starting {_others(names)}, which join p1 and steal from it: watching the load spread", flush=True)
        killed = False
        ideal = args.jobs * args.job_s / (args.peers * args.slots)
        while True:
            time.sleep(_FRAME_S)
            t = time.monotonic() - start_t
            with Client(addrs[0]) as c:
                finished = all(s.final for s in c.list(len(ids)))
            frame, queued = _render(names, addrs, t, labels)
            print(frame, flush=True)
            if finished or t > 10 * ideal + 20:
                break
            if not killed and t > ideal / 3 and len(queued) == args.peers:
                victim = max(range(1, args.peers), key=lambda i: queued[names[i]])
                procs[victim].kill()
                procs[victim].wait()
                labels[names[victim]] = "killed"
                print(f"  >>> kill -9 {names[victim]} (it holds jobs stolen from p1); restarting it at once", flush=True)
                killed = True
                threading.Timer(0.3, lambda v=victim: (restart_peer(procs, v), labels.pop(names[v], None))).start()
        elapsed = time.monotonic() - start_t
        with Client(addrs[0]) as c:
            print("membership as p1 sees it:")
            for line in c.peers():
                print("   ", line)
        return _check(addrs[0], expected, elapsed, ideal)


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
            ran_on[status.executor] = ran_on.get(status.executor, 0) + 1
            reexecuted += status.attempt > 1
        records = len(c.list(len(expected)))
    print(f"\nchecked {plural(len(expected), 'acknowledged job')} at their home peer p1 in {elapsed:.1f}s (ideal {ideal:.1f}s):")
    print(f"  lost {len(lost)}   wrong output {len(wrong)}   records {records}   re-executed after the kill {reexecuted}")
    print("  ran on: " + ", ".join(f"{name} {n}" for name, n in sorted(ran_on.items())))
    ok = not lost and not wrong and records == len(expected)
    print("  OK: nothing acknowledged was lost" if ok else "  FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
