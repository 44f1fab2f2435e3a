"""`python -m sim bench speed`: the speed scenarios of issue 14, each beside
its floor where one exists, measured in the same run.

    python -m sim bench speed [--scenario NAME|all] [--runs 3] [--scale 1] [--json]

3 peers x `--slots 1` on loopback, every job submitted to the first peer
(acks-one and acks-16: one peer). Each scenario prints its median over
`--runs` runs, every run, the floor and ratio where one exists, the target
and whether the median meets it. `--scale` shrinks every size (the test uses
it to prove the command works in seconds; figures come from `--scale 1`).

S2 is measured with the trio client (`AsyncClient`, the figure judged
against the target) and, on the same cluster, with the blocking client
(printed beside it): the difference is the client's event loop, not the peer.

Waiting for results is part of every end-to-end figure: the WAITs are
pipelined on one connection (replies come in request order, so the last one
answers when the last job is done), which costs the peer one reply per job.
"""

from __future__ import annotations

import heapq
import random
import statistics
import subprocess
import time

import trio

from executor.client import AsyncClient, Client
from executor.client.replies import parse_status, wait_line
from sim.bench import _pct, _submit_load, peer_processes

PEERS = 3
SETTLE_S = 1.5  # membership and loads settle before a balance-sensitive run
WAIT_WINDOW = 256  # WAITs outstanding on the waiting connection
WAIT_TIMEOUT_S = 600.0  # a WAIT longer than this is a failed run, not a figure
CLIENT_TIMEOUT_S = 120.0

S1_JOBS = 5000
S2_ROUND_TRIPS = 200
S3_JOBS = 1000
S4_JOBS, S4_SLEEP_MS = 300, 20
SKEW_LONG, SKEW_LONG_MS, SKEW_SHORT, SKEW_SHORT_MS, SKEW_SEED = 4, 1000, 60, 20, 14
ACKS_ONE_BATCHES, ACKS_ONE_BATCH = 20, 1000
ACKS16_CLIENTS, ACKS16_IN_FLIGHT, ACKS16_PER_CLIENT = 16, 32, 2000

# name: (unit, target, True if higher is better)
TARGETS = {
    "S1": ("jobs/s", 3000, True), "S1loop": ("jobs/s", 1500, True),
    "S2_p50": ("ms", 1.0, False), "S2_p99": ("ms", 3.0, False),
    "S3": ("floor/ours", 0.9, True), "S4": ("x ideal", 1.04, False),
    "S4skew": ("x ideal", 1.05, False), "acks-one": ("acks/s", 10000, True),
    "acks-16": ("acks/s", 20000, True),
}
SCENARIOS = ("S1", "S1loop", "S2", "S3", "S4", "S4skew", "acks-one", "acks-16")


def _n(size: int, scale: float, least: int = 3) -> int:
    return max(least, int(size * scale))


async def _wait_done(client: AsyncClient, ids: list[str]) -> None:
    """Every job in `ids` finished `done`; WAITs pipelined on `client`."""
    replies = await client.request_many([wait_line(i, WAIT_TIMEOUT_S) for i in ids], window=WAIT_WINDOW,
                                        timeout_s=WAIT_TIMEOUT_S)
    for job_id, reply in zip(ids, replies):
        status = parse_status(reply.check().text)
        if status.state != "done":
            raise RuntimeError(f"job {job_id} did not finish: {status}")


async def _bulk(addr: str, lines: list[str]) -> float:
    """Seconds from the first byte of `lines` (sent at once) to every job done."""
    async with AsyncClient(addr, timeout_s=CLIENT_TIMEOUT_S) as client:
        start = time.perf_counter()
        await client.send_lines(lines)
        ids = [(await client.read()).check().text for _ in lines]
        await _wait_done(client, ids)
        return time.perf_counter() - start


async def _loop(addr: str, lines: list[str]) -> float:
    """Seconds for one SUBMIT -> OK at a time, then every job done."""
    async with AsyncClient(addr, timeout_s=CLIENT_TIMEOUT_S) as client:
        start = time.perf_counter()
        ids = [(await client.request(line)).check().text for line in lines]
        await _wait_done(client, ids)
        return time.perf_counter() - start


async def _round_trips(addr: str, count: int) -> list[float]:
    """Seconds of each submit -> WAIT -> answer of a no-op job, one at a time."""
    out = []
    async with AsyncClient(addr, timeout_s=CLIENT_TIMEOUT_S) as client:
        for _ in range(count):
            start = time.perf_counter()
            job_id = (await client.request("0")).check().text
            await _wait_done(client, [job_id])
            out.append(time.perf_counter() - start)
    return out


def _round_trips_blocking(addr: str, count: int) -> list[float]:
    """The same with the blocking client (executor.client.Client): the peer's
    share of the round trip without an event loop on the client's side."""
    out = []
    with Client(addr, timeout_s=CLIENT_TIMEOUT_S) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.wait(client.request("0"), WAIT_TIMEOUT_S)
            out.append(time.perf_counter() - start)
    return out


def _xargs_floor(jobs: int) -> float:
    """Seconds for `seq N | xargs -P3 -n1 true`: the spawn floor on this box."""
    start = time.perf_counter()
    subprocess.run(f"seq {jobs} | xargs -P{PEERS} -n1 true", shell=True, check=True)
    return time.perf_counter() - start


def skew_lines(scale: float = 1.0) -> tuple[list[str], float]:
    """A seeded shuffle of a few long jobs among many short; the ideal seconds."""
    long_n, short_n = _n(SKEW_LONG, scale, 1), _n(SKEW_SHORT, scale)
    long_ms = max(100, int(SKEW_LONG_MS * min(1.0, scale * 4)))
    lines = [str(long_ms)] * long_n + [str(SKEW_SHORT_MS)] * short_n
    random.Random(SKEW_SEED).shuffle(lines)
    total_s = (long_n * long_ms + short_n * SKEW_SHORT_MS) / 1000
    return lines, max(total_s / PEERS, long_ms / 1000)


def _cluster_runs(runs: int, one_run, peers: int = PEERS, settle: bool = False) -> list:
    """`one_run(addrs)` `runs` times on one cluster of fresh peers."""
    with peer_processes(peers, slots=1) as (addrs, _):
        if settle:
            time.sleep(SETTLE_S)
        return [one_run(addrs) for _ in range(runs)]


def _entry(name: str, runs: list[float], **extra) -> dict:
    unit, target, higher = TARGETS[name]
    median = statistics.median(runs)
    met = median >= target if higher else median <= target
    return {"figure": round(median, 3), "unit": unit, "runs": [round(r, 3) for r in runs],
            "target": target, "met": met, **extra}


def run_s1(args) -> dict:
    jobs = _n(S1_JOBS, args.scale)
    secs = _cluster_runs(args.runs, lambda a: trio.run(_bulk, a[0], ["0"] * jobs))
    return {"S1": _entry("S1", [jobs / s for s in secs], jobs=jobs)}


def run_s1loop(args) -> dict:
    jobs = _n(S1_JOBS, args.scale)
    secs = _cluster_runs(args.runs, lambda a: trio.run(_loop, a[0], ["0"] * jobs))
    return {"S1loop": _entry("S1loop", [jobs / s for s in secs], jobs=jobs)}


def run_s2(args) -> dict:
    count = _n(S2_ROUND_TRIPS, args.scale, 5)
    pairs = _cluster_runs(args.runs, lambda a: (trio.run(_round_trips, a[0], count), _round_trips_blocking(a[0], count)))
    p50 = [_pct(s, 0.5) * 1000 for s, _ in pairs]
    p99 = [_pct(s, 0.99) * 1000 for s, _ in pairs]
    blocking = {"blocking_client_p50_ms": round(statistics.median(_pct(b, 0.5) * 1000 for _, b in pairs), 3),
                "blocking_client_p99_ms": round(statistics.median(_pct(b, 0.99) * 1000 for _, b in pairs), 3)}
    return {"S2_p50": _entry("S2_p50", p50, round_trips=count, **blocking),
            "S2_p99": _entry("S2_p99", p99, round_trips=count)}


def run_s3(args) -> dict:
    jobs = _n(S3_JOBS, args.scale)

    def one(addrs):
        floor = _xargs_floor(jobs)
        ours = trio.run(_bulk, addrs[0], ["SUBMIT true"] * jobs)
        return floor, ours

    pairs = _cluster_runs(args.runs, one)
    return {"S3": _entry("S3", [f / o for f, o in pairs], jobs=jobs,
                         floor_s=round(statistics.median(f for f, _ in pairs), 3),
                         ours_s=round(statistics.median(o for _, o in pairs), 3),
                         floor_runs_s=[round(f, 3) for f, _ in pairs], ours_runs_s=[round(o, 3) for _, o in pairs])}


def run_s4(args) -> dict:
    jobs = _n(S4_JOBS, args.scale)
    ideal = jobs * S4_SLEEP_MS / 1000 / PEERS
    secs = _cluster_runs(args.runs, lambda a: trio.run(_bulk, a[0], [str(S4_SLEEP_MS)] * jobs), settle=True)
    return {"S4": _entry("S4", [s / ideal for s in secs], jobs=jobs, ideal_s=round(ideal, 3),
                         makespan_s=round(statistics.median(secs), 3))}


def schedule_bounds(lines: list[str], machines: int = PEERS) -> tuple[float, float]:
    """(a lower bound on any schedule's makespan, greedy list scheduling in
    submission order's makespan), in seconds, for sleep jobs `lines`.

    The bound is the classic max(total / m, longest, p_m + p_{m+1}): with
    more long jobs than machines, two of them share one. Greedy in
    submission order is what a perfect late-binding scheduler that knows no
    runtimes achieves (each job to the first free slot), overheads aside."""
    ms = sorted((int(x) for x in lines), reverse=True)
    pair = ms[machines - 1] + ms[machines] if len(ms) > machines else 0
    bound = max(sum(ms) / machines, ms[0], pair) / 1000
    free = [0] * machines
    for x in lines:
        heapq.heapreplace(free, free[0] + int(x))
    return bound, max(free) / 1000


def run_s4skew(args) -> dict:
    lines, ideal = skew_lines(args.scale)
    bound, greedy = schedule_bounds(lines)
    secs = _cluster_runs(args.runs, lambda a: trio.run(_bulk, a[0], lines), settle=True)
    return {"S4skew": _entry("S4skew", [s / ideal for s in secs], jobs=len(lines), ideal_s=round(ideal, 3),
                             makespan_s=round(statistics.median(secs), 3),
                             # The "ideal" (total / peers) is below what any schedule can do
                             # when long jobs outnumber peers: the figures against the true bound
                             # and against runtime-oblivious greedy list scheduling, same runs.
                             lower_bound_s=round(bound, 3), greedy_s=round(greedy, 3),
                             over_bound=round(statistics.median(secs) / bound, 3),
                             over_greedy=round(statistics.median(secs) / greedy, 3))}


async def _acks_one(addr: str, batches: int, batch: int) -> float:
    """Acks/s of `batches` x `batch` pipelined `SUBMIT true` on one connection,
    queued behind a `sleep 600` that holds the only slot (nothing runs)."""
    async with AsyncClient(addr, timeout_s=CLIENT_TIMEOUT_S) as client:
        (await client.request("SUBMIT sleep 600")).check()
        start = time.perf_counter()
        for _ in range(batches):
            await client.send_lines(["SUBMIT true"] * batch)
            for _ in range(batch):
                (await client.read()).check()
        return batches * batch / (time.perf_counter() - start)


def run_acks_one(args) -> dict:
    batches, batch = _n(ACKS_ONE_BATCHES, args.scale, 1), _n(ACKS_ONE_BATCH, args.scale, 10)
    rates = []
    for _ in range(args.runs):  # a fresh peer each run: the queue does not grow across runs
        rates += _cluster_runs(1, lambda a: trio.run(_acks_one, a[0], batches, batch), peers=1)
    return {"acks-one": _entry("acks-one", rates, acks=batches * batch)}


def run_acks16(args) -> dict:
    """sim/bench.py `submit`'s pipelined phase: 16 clients x 32 in flight of a
    job that sleeps 10 minutes (nothing finishes), one peer."""
    per_client = _n(ACKS16_PER_CLIENT, args.scale, ACKS16_IN_FLIGHT)

    def one(addrs):
        elapsed, _, ids = trio.run(_submit_load, addrs, ACKS16_CLIENTS, per_client, ACKS16_IN_FLIGHT, "600000")
        return len(ids) / elapsed

    rates = []
    for _ in range(args.runs):
        rates += _cluster_runs(1, one, peers=1)
    return {"acks-16": _entry("acks-16", rates, acks=ACKS16_CLIENTS * per_client)}


RUNNERS = {"S1": run_s1, "S1loop": run_s1loop, "S2": run_s2, "S3": run_s3, "S4": run_s4,
           "S4skew": run_s4skew, "acks-one": run_acks_one, "acks-16": run_acks16}


def _line(name: str, e: dict) -> str:
    mark = "met" if e["met"] else "MISSED"
    cmp = ">=" if TARGETS[name][2] else "<="
    floor = ""
    if "floor_s" in e:
        floor = f"  (floor xargs -P{PEERS}: {e['floor_s']:.3f}s, ours {e['ours_s']:.3f}s)"
    if "ideal_s" in e:
        floor = f"  (makespan {e['makespan_s']:.3f}s, ideal {e['ideal_s']:.3f}s)"
    if "lower_bound_s" in e:
        floor += (f"\n{'':9s} against any schedule's lower bound {e['lower_bound_s']:.3f}s: {e['over_bound']:.3f}; "
                  f"against greedy list scheduling {e['greedy_s']:.3f}s: {e['over_greedy']:.3f}")
    if "blocking_client_p50_ms" in e:
        floor = (f"  (the AsyncClient; the blocking client: p50 {e['blocking_client_p50_ms']:.3f} ms, "
                 f"p99 {e['blocking_client_p99_ms']:.3f} ms)")
    runs = " / ".join(f"{r:,.3f}" if r < 100 else f"{r:,.0f}" for r in e["runs"])
    fig = f"{e['figure']:,.3f}" if e["figure"] < 100 else f"{e['figure']:,.0f}"
    return f"{name:9s} {fig:>10s} {e['unit']:10s} target {cmp} {e['target']:<7g} {mark:6s} runs {runs}{floor}"


def bench_speed(args) -> dict:
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    out: dict = {}
    for name in names:
        result = RUNNERS[name](args)
        for key, entry in result.items():
            print(_line(key, entry), flush=True)
        out.update(result)
    return out


def add_speed_parser(sub):
    p = sub.add_parser("speed", help="issue 14's speed scenarios, each beside its floor")
    p.add_argument("--scenario", choices=("all", *SCENARIOS), default="all")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every size (the test runs tiny sizes)")
    return p
