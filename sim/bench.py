"""Benchmarks against real peer processes on loopback (not tests: figures).

    python -m sim.bench submit [--clients 16] [--in-flight 32] [--seconds 5]
    python -m sim.bench throughput [--jobs 5000]
    python -m sim.bench restart [--jobs 100000]   (sim/restart_bench.py)
    python -m sim.bench speed [--scenario S1|all]   (sim/bench_speed.py, issue 14)

`submit` measures durable SUBMIT acks per second and ack latency from many
concurrent clients, each keeping `--in-flight` submissions outstanding on one
pipelined connection, for both the pipelined and the one-at-a-time case.
`throughput` measures end to end: N zero-millisecond sleep jobs submitted,
run and finished, from the first submit to the last job done.

The load generator is one trio process, so that the measurement costs the
machine as little as possible; the peer is a separate `peerjobs node`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import trio

from executor.client import AsyncClient

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def peer_processes(count: int, *, slots: int = 1, extra: tuple = ()):
    """Start `count` peers joined into one cluster; always stopped."""
    tmp = tempfile.mkdtemp(prefix="peerjobs-bench-")
    procs, addrs = [], []
    try:
        ports = [free_port() for _ in range(count)]
        for i, port in enumerate(ports):
            addr = f"127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "executor.client.cli", "node", "--data", os.path.join(tmp, f"p{i + 1}"),
                   "--listen", addr, "--name", f"p{i + 1}", "--slots", str(slots), *extra]
            if i > 0:
                cmd += ["--join", addrs[0]]
            procs.append(_spawn(cmd, os.path.join(tmp, f"p{i + 1}.log"), port))
            addrs.append(addr)
        yield addrs, procs
    finally:
        stop_peers(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def stop_peers(procs: list) -> None:
    """SIGTERM every peer process still running (None: never started), then
    wait for each; one still there after 10 s is killed."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    for p in live:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _spawn(cmd: list[str], log_path: str, port: int) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=_ROOT, stdout=log, stderr=log)
    proc.log_path, proc.port = log_path, port
    wait_listening(port, proc)
    return proc


def restart_peer(procs: list[subprocess.Popen], index: int) -> None:
    """Start peer `index` again, same command, port and data directory."""
    old = procs[index]
    if old.poll() is None:
        old.kill()
        old.wait()
    procs[index] = _spawn(old.args, old.log_path, old.port)


def wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Until the peer `proc` on loopback `port` accepts connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the peer on port {port} exited during start-up (log: {proc.log_path})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the peer on port {port} did not listen within {timeout_s:g} s (log: {proc.log_path})")


async def _submitter(addr: str, count: int, in_flight: int, job: str, latencies: list, ids: list) -> None:
    """One client: `count` submissions of `job`, `in_flight` outstanding,
    the latency of each from its send to its reply."""
    sent_at: list[float] = []
    send_lock = trio.Semaphore(in_flight)
    async with AsyncClient(addr) as client:

        async def writer() -> None:
            for _ in range(count):
                await send_lock.acquire()
                sent_at.append(time.perf_counter())
                await client.send_lines([job])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for i in range(count):
                ids.append((await client.read()).check().text)
                latencies.append(time.perf_counter() - sent_at[i])
                send_lock.release()


async def _submit_load(addrs: list[str], clients: int, per_client: int, in_flight: int, job: bytes):
    latencies: list[float] = []
    ids: list[str] = []
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(clients):
            nursery.start_soon(_submitter, addrs[k % len(addrs)], per_client, in_flight, job, latencies, ids)
    elapsed = time.perf_counter() - start
    return elapsed, latencies, ids


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def _wait_all(addr: str, ids: list[str], connections: int = 8) -> None:
    async def waiter(chunk: list[str]) -> None:
        async with AsyncClient(addr, timeout_s=600) as client:
            for job_id in chunk:
                status = await client.wait(job_id, 600)
                if status.state != "done":
                    raise RuntimeError(f"job {job_id} did not finish: {status}")

    async with trio.open_nursery() as nursery:
        for k in range(connections):
            nursery.start_soon(waiter, ids[k::connections])


def bench_submit(args) -> dict:
    out = {}
    job = str(args.sleep_ms)
    with peer_processes(1, slots=args.slots) as (addrs, _):
        for label, in_flight in (("pipelined", args.in_flight), ("one_in_flight", 1)):
            per_client = max(1, int(args.target_per_s * args.seconds / args.clients)) if in_flight > 1 else \
                max(1, int(args.target_per_s / 2 * args.seconds / args.clients))
            elapsed, lat, ids = trio.run(_submit_load, addrs, args.clients, per_client, in_flight, job)
            out[label] = {
                "clients": args.clients, "in_flight": in_flight, "acks": len(ids),
                "acks_per_s": round(len(ids) / elapsed), "p50_ms": round(_pct(lat, 0.5) * 1000, 3),
                "p99_ms": round(_pct(lat, 0.99) * 1000, 3), "seconds": round(elapsed, 2),
            }
            print(f"{label:14s} {args.clients} clients x {in_flight:2d} in flight: {len(ids)} acks in {elapsed:.2f}s "
                  f"= {len(ids) / elapsed:,.0f}/s   ack p50 {_pct(lat, .5) * 1000:.2f} ms  p99 {_pct(lat, .99) * 1000:.2f} ms",
                  flush=True)
    return out


def bench_throughput(args) -> dict:
    with peer_processes(args.peers, slots=args.slots) as (addrs, _):
        async def run():
            start = time.perf_counter()
            _, _, ids = await _submit_load(addrs[:1], 8, args.jobs // 8, 32, "0")
            await _wait_all(addrs[0], ids)
            return time.perf_counter() - start, ids

        elapsed, ids = trio.run(run)
    rate = len(ids) / elapsed
    print(f"throughput: {len(ids)} zero-ms sleep jobs on {args.peers} peer(s), submitted to one: "
          f"{elapsed:.2f}s = {rate:,.0f} jobs/s end to end", flush=True)
    return {"jobs": len(ids), "peers": args.peers, "seconds": round(elapsed, 2), "jobs_per_s": round(rate)}


async def _self_load(addr: str) -> tuple[int, int] | None:
    """(queued, running) from the peer's own PEERS line, or None if it is down."""
    try:
        async with AsyncClient(addr, timeout_s=1) as client:
            me = next(m for m in await client.members() if m.is_self)
            return me.queued, me.running
    except (OSError, TimeoutError, StopIteration, ValueError):
        return None


async def _sample_loads(addrs: list[str], interval_s: float, samples: list, stop: trio.Event) -> None:
    """Every `interval_s`, each peer's queued + running, for imbalance over time."""
    while not stop.is_set():
        t = time.perf_counter()
        loads = [await _self_load(a) for a in addrs]
        samples.append((t, [None if x is None else x[0] + x[1] for x in loads]))
        with trio.move_on_after(interval_s):
            await stop.wait()


def imbalance(samples: list) -> tuple[float, float]:
    """Time-averaged and p99 max − min of load across the peers that answered."""
    spreads, weights = [], []
    for (t, loads), (t_next, _) in zip(samples, samples[1:]):
        live = [x for x in loads if x is not None]
        if len(live) >= 2:
            spreads.append(max(live) - min(live))
            weights.append(t_next - t)
    if not spreads:
        return float("nan"), float("nan")
    return sum(s * w for s, w in zip(spreads, weights)) / sum(weights), _pct(spreads, 0.99)


async def _makespan(addrs: list[str], lines: list[str], sample_s: float) -> tuple[float, list, list[str]]:
    samples: list = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_loads, addrs, sample_s, samples, stop)
        start = time.perf_counter()
        async with AsyncClient(addrs[0]) as client:
            await client.send_lines(lines)
            ids = [(await client.read()).check().text for _ in lines]
        await _wait_all(addrs[0], ids, connections=min(8, len(ids)))
        elapsed = time.perf_counter() - start
        stop.set()
    return elapsed, samples, ids


def bench_balance(args) -> dict:
    """Issue 4's figures: makespan over ideal and imbalance, 3 peers x 1 slot."""
    out = {}
    with peer_processes(args.peers, slots=1) as (addrs, _):
        trio.run(trio.sleep, 1.5)  # let membership and loads settle
        lines = [str(args.sleep_ms)] * args.jobs
        ideal = args.jobs * args.sleep_ms / 1000 / args.peers
        elapsed, samples, _ = trio.run(_makespan, addrs, lines, 0.02)
        avg, p99 = imbalance(samples)
        out["uniform"] = {"jobs": args.jobs, "sleep_ms": args.sleep_ms, "makespan_s": round(elapsed, 3),
                          "ideal_s": round(ideal, 3), "over_ideal": round(elapsed / ideal, 3),
                          "imbalance_avg": round(avg, 2), "imbalance_p99": p99}
        print(f"uniform: {args.jobs} x {args.sleep_ms} ms on {args.peers} peers x 1 slot, all submitted to one: "
              f"makespan {elapsed:.3f}s, ideal {ideal:.3f}s -> {elapsed / ideal:.3f} x ideal; "
              f"imbalance (max-min of queued+running) time-avg {avg:.2f}, p99 {p99}", flush=True)
    with peer_processes(args.peers, slots=1) as (addrs, _):
        trio.run(trio.sleep, 1.5)
        lines = [("1000" if i in (0, 3, 6) else "20") for i in range(30)]
        elapsed, samples, _ = trio.run(_makespan, addrs, lines, 0.02)
        ideal = (3 * 1.0 + 27 * 0.02) / args.peers
        out["skewed"] = {"makespan_s": round(elapsed, 3), "ideal_s": round(ideal, 3)}
        print(f"skewed: 30 jobs (jobs 0, 3, 6 sleep 1 s, the rest 20 ms) to one of {args.peers} peers: "
              f"makespan {elapsed:.3f}s (ideal {ideal:.2f}s)", flush=True)
    return out


def _views(addrs: list[str], skip: int | None = None) -> list[dict[str, str]]:
    """Each reachable peer's PEERS view {member: state}."""
    from executor.client import Client

    out = []
    for i, addr in enumerate(addrs):
        if i == skip:
            continue
        try:
            with Client(addr, timeout_s=2) as c:
                out.append({line.split()[0]: line.split()[2] for line in c.peers()})
        except OSError:
            out.append({})
    return out


def _stats(addr: str) -> dict[str, int]:
    from executor.client import Client

    with Client(addr, timeout_s=2) as c:
        return {k: int(v) for k, v in (line.split("=", 1) for line in c._lines("STATS"))}


def _time_until(predicate, timeout_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.01)
    return float("inf")


def bench_membership(args) -> dict:
    """Issue 3's figures: detection and rejoin times over several kills, and
    gossip traffic per peer per second on an idle cluster."""
    import random as random_module

    rng = random_module.Random(args.seed)
    names = [f"p{i + 1}" for i in range(args.peers)]
    detect, rejoin = [], []
    with peer_processes(args.peers, slots=1) as (addrs, procs):
        assert _time_until(lambda: all(len([s for s in v.values() if s == "alive"]) == args.peers
                                       for v in _views(addrs)), 20) < 20, "cluster did not form"
        before = {a: _stats(a) for a in addrs}
        t0 = time.perf_counter()
        time.sleep(args.idle_s)
        after = {a: _stats(a) for a in addrs}
        idle = time.perf_counter() - t0
        frames = [(after[a]["link_frames_sent"] - before[a]["link_frames_sent"]) / idle for a in addrs]
        sent = [(after[a]["link_bytes_sent"] - before[a]["link_bytes_sent"]) / idle for a in addrs]
        for _ in range(args.kills):
            victim = rng.randrange(1, args.peers)
            procs[victim].kill()
            procs[victim].wait()
            d = _time_until(lambda: all(v.get(names[victim]) == "dead" for v in _views(addrs, skip=victim)), 15)
            restart_peer(procs, victim)
            r = _time_until(lambda: all(v.get(names[victim]) == "alive" for v in _views(addrs)), 15)
            detect.append(d)
            rejoin.append(r)
            print(f"kill -9 {names[victim]}: dead in every other view after {d:.2f}s; "
                  f"after restart alive in every view after {r:.2f}s", flush=True)
            time.sleep(1.0)
    out = {
        "peers": args.peers, "kills": args.kills,
        "detect_median_s": round(statistics.median(detect), 3), "detect_max_s": round(max(detect), 3),
        "rejoin_median_s": round(statistics.median(rejoin), 3), "rejoin_max_s": round(max(rejoin), 3),
        "frames_per_peer_per_s": round(statistics.mean(frames), 1),
        "bytes_per_peer_per_s": round(statistics.mean(sent)),
    }
    print(f"detection: median {out['detect_median_s']}s, max {out['detect_max_s']}s (target 2 s); "
          f"rejoin: median {out['rejoin_median_s']}s, max {out['rejoin_max_s']}s (target 1 s)")
    print(f"idle gossip at {args.peers} peers: {out['frames_per_peer_per_s']} frames "
          f"and {out['bytes_per_peer_per_s']} bytes sent per peer per second")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench")
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("submit", help="durable SUBMIT acks/s and ack latency against one peer")
    s.add_argument("--clients", type=int, default=16)
    s.add_argument("--in-flight", type=int, default=32)
    s.add_argument("--seconds", type=float, default=3.0, help="roughly how long each phase runs")
    s.add_argument("--target-per-s", type=int, default=12000, help="sizes the phases; not a rate limit")
    s.add_argument("--sleep-ms", type=int, default=600000,
                   help="the benchmark job: sleep this long in the peer (default: long, so that the jobs queue and the figure is the submit path alone; 0 measures submits racing job completions)")
    s.add_argument("--slots", type=int, default=2)
    t = sub.add_parser("throughput", help="end-to-end jobs/s of zero-ms sleep jobs")
    t.add_argument("--jobs", type=int, default=5000)
    t.add_argument("--peers", type=int, default=1)
    t.add_argument("--slots", type=int, default=2)
    b = sub.add_parser("balance", help="makespan over ideal and imbalance across peers (issue 4)")
    b.add_argument("--peers", type=int, default=3)
    b.add_argument("--jobs", type=int, default=300)
    b.add_argument("--sleep-ms", type=int, default=20)
    m = sub.add_parser("membership", help="failure detection and rejoin times, gossip traffic (issue 3)")
    m.add_argument("--peers", type=int, default=5)
    m.add_argument("--kills", type=int, default=5)
    m.add_argument("--idle-s", type=float, default=5.0, help="how long to count idle gossip traffic")
    m.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("restart", help="kill -9 of a peer with a long queue: time to serve, memory (issue 12)")
    r.add_argument("--jobs", type=int, default=100_000)
    from sim.bench_speed import add_speed_parser, bench_speed

    sp = add_speed_parser(sub)  # issue 14's scenarios (sim/bench_speed.py)
    for p in (s, t, b, m, r, sp):
        p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args(argv)
    from sim.restart_bench import bench_restart

    result = {"submit": bench_submit, "throughput": bench_throughput, "balance": bench_balance,
              "membership": bench_membership, "restart": bench_restart, "speed": bench_speed}[args.what](args)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
