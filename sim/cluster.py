"""`python -m sim cluster`: real peers on loopback under kill -9 / restart chaos.

    python -m sim cluster --peers 5 --jobs 10000 --job 5 --submit-to all \\
        --chaos kill-restart --kill-every 2 --seed 1

Starts N `peerjobs node` processes (own ports and data dirs in one work dir,
joined through the first), drives them from many pipelined clients in one trio
process, SIGKILLs and restarts a seeded-random peer every few seconds, watches
every peer's PEERS view (membership and load) every 50 ms, waits for every
acknowledged job to finish, and then checks the whole history Jepsen-style
(sim/checker.py): nothing acknowledged lost, nothing duplicated, nothing
unexpected. Exit status 1 when an invariant breaks (the work dir, with each
peer's log, is then kept and its path printed). See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import trio

from executor.client import LINES, AsyncClient, Reply
from sim import checker
from sim.bench import free_port

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONN_ERRORS = (OSError, ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError)
_WINDOW = 48  # requests in flight on one connection (the peer allows 64)


def _say(*parts) -> None:
    print("cluster:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Processes


try:  # bound here, so that the child only calls it (no import between fork and exec)
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):
    _prctl = None

_live_clusters: list[ProcessCluster] = []


def _die_with_parent() -> None:
    """In the child between fork and exec: SIGKILL me when the harness dies
    (PR_SET_PDEATHSIG), so that not even a kill -9 of the harness leaves peers."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


class PeerProc:
    """One `peerjobs node`: started, SIGKILLed and restarted on the same port
    and data dir. Logs append to <workdir>/<name>.log across lives."""

    def __init__(self, workdir: str, name: str, port: int, slots: int, join: list[str], verbose: bool, *,
                 host: str = "127.0.0.1", prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        """`prefix` goes before the command line (e.g. `ip netns exec NS`, which
        execs, so the pid is still the peer's); `env` is added to the
        environment; `extra_args` go after the peer's options."""
        self.name, self.port, self.slots, self.host = name, port, slots, host
        self.addr = f"{host}:{port}"
        self.prefix, self.env = list(prefix or []), env
        self.data = os.path.join(workdir, name)
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.cmd = [sys.executable, "-m", "executor.cli", "node", "--data", self.data, "--listen", self.addr,
                    "--name", name, "--slots", str(slots)]
        for seed in join:
            self.cmd += ["--join", seed]
        if verbose:
            self.cmd.append("-v")
        self.cmd += list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.lives = 0

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.prefix + self.cmd, cwd=_ROOT, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent,
                                         env=None if self.env is None else {**os.environ, **self.env})
        self.lives += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def wait_listening(self, timeout_s: float = 20.0) -> bool:
        with trio.move_on_after(timeout_s):
            while True:
                if not self.running():
                    return False
                try:
                    with trio.fail_after(1.0):
                        stream = await trio.open_tcp_stream(self.host, self.port)
                    await stream.aclose()
                    return True
                except (OSError, trio.TooSlowError):
                    await trio.sleep(0.02)
        return False


class ProcessCluster:
    """N peers; `close()` stops every one of them whatever happened."""

    def __init__(self, n: int, slots: int, workdir: str, verbose: bool = False,
                 peers: list[PeerProc] | None = None) -> None:
        """`peers`: use these (already built) instead of n on loopback ports."""
        if peers is None:
            ports = [free_port() for _ in range(n)]
            first = f"127.0.0.1:{ports[0]}"
            peers = [PeerProc(workdir, f"p{i + 1}", port, slots, [] if i == 0 else [first], verbose)
                     for i, port in enumerate(ports)]
        self.peers = peers
        self.by_name = {p.name: p for p in self.peers}
        _live_clusters.append(self)

    async def start(self) -> None:
        first, rest = self.peers[0], self.peers[1:]
        first.spawn()
        if not await first.wait_listening():
            raise RuntimeError(f"{first.name} did not start (see {first.log_path})")
        for p in rest:
            p.spawn()
        for p in rest:
            if not await p.wait_listening():
                raise RuntimeError(f"{p.name} did not start (see {p.log_path})")

    def close(self) -> None:
        if self in _live_clusters:
            _live_clusters.remove(self)
        for p in self.peers:  # SIGTERM all first, then wait: stops in parallel
            if p.running():
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for p in self.peers:
            if p.proc is None:
                continue
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()

    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.peers if p.proc is not None]


# ---------------------------------------------------------------------------
# Talking to peers: through the one client library (executor/client.py)


def _as_tuple(reply: Reply, verb: str) -> tuple:
    """A reply as plain data: ("ok", text) / ("err", code, message); RESULT
    adds stdout; LIST and PEERS give ("ok", [lines])."""
    if not reply.ok:
        return ("err", reply.code, reply.message)
    if verb in ("LIST", "PEERS", "STATS"):
        return ("ok", reply.lines)
    if verb == "RESULT":
        return ("ok", reply.text, reply.stdout)
    return ("ok", reply.text)


async def _open(addr: str, timeout_s: float = 2.0) -> AsyncClient:
    return await AsyncClient.open(addr, timeout_s=timeout_s)


async def request_many(addr: str, lines: list[str], *, timeout_s: float = 60.0) -> list:
    """Pipeline `lines` on one connection, `_WINDOW` outstanding; the replies
    in order. Raises on a broken connection or timeout."""
    client = await _open(addr)
    try:
        replies = await client.request_many(lines, window=_WINDOW, timeout_s=timeout_s)
    finally:
        await client.aclose()
    return [_as_tuple(r, line.split(" ", 1)[0]) for r, line in zip(replies, lines)]


# ---------------------------------------------------------------------------
# What happened, as plain data


@dataclass
class Record:
    t0: float
    submissions: list[checker.Submission] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_submit: float | None = None
    last_ack: float | None = None
    loads: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    transitions: dict[tuple[str, str], list[tuple[float, str, int]]] = field(default_factory=lambda: defaultdict(list))
    kills: list[checker.Kill] = field(default_factory=list)
    down: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def peers_sample(self, observer: str, t: float, lines: list[str]) -> None:
        for line in lines:
            parts = line.split(" ")
            if len(parts) < 3:
                continue
            member, state = parts[0], parts[2]
            fields = dict(x.split("=", 1) for x in parts[3:] if "=" in x)
            inc = int(fields["incarnation"]) if fields.get("incarnation", "-").isdigit() else -1
            if parts[-1] == "self":
                q, r = fields.get("queued", "0"), fields.get("running", "0")
                if q.isdigit() and r.isdigit():
                    self.loads[observer].append((t, int(q) + int(r)))
                continue
            trail = self.transitions[(observer, member)]
            if not trail or trail[-1][1:] != (state, inc):
                trail.append((t, state, inc))


class Workload:
    """Hands out submission tags to the clients; remembers each outcome."""

    def __init__(self, jobs: int, job: str) -> None:
        self.jobs = jobs
        self.sleep_ms = int(job) if job.strip().isdigit() else None
        self.command = job
        self.next_tag = 0
        self.retry: deque[int] = deque()
        self.busy = 0

    @property
    def tagged(self) -> bool:
        return self.sleep_ms is None

    def line(self, tag: int) -> str:
        return f"{self.sleep_ms}" if self.sleep_ms is not None else f"SUBMIT {self.command}; echo {tag}"

    def take(self) -> int | None:
        if self.retry:
            return self.retry.popleft()
        if self.next_tag < self.jobs:
            self.next_tag += 1
            return self.next_tag - 1
        return None


# ---------------------------------------------------------------------------
# The run


async def _client(k: int, targets: list[PeerProc], wl: Workload, rec: Record, in_flight: int, rotate: bool, *,
                  reply_timeout_s: float | None = None, rotate_after: int = 5, pace=None) -> None:
    """One client connection at a time. `reply_timeout_s`: a connection whose
    oldest outstanding request has no reply for that long counts as broken (a
    partition stalls TCP instead of breaking it); `rotate_after`: failed
    connects before trying the next peer; `pace`: awaited before each
    submission (rate limiting)."""
    idx = k % len(targets)
    failures = 0
    while wl.retry or wl.next_tag < wl.jobs:
        peer = targets[idx]
        try:
            conn = await _open(peer.addr, timeout_s=1.0)
        except (*_CONN_ERRORS, trio.TooSlowError):
            failures += 1
            if rotate and failures % rotate_after == 0:
                idx = (idx + 1) % len(targets)
            await trio.sleep(0.05)
            continue
        failures = 0
        pending: deque[tuple[int, float]] = deque()
        window = trio.Semaphore(in_flight)
        state = {"done": False, "broken": False}
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                try:
                    while True:
                        await window.acquire()
                        if pace is not None:
                            await pace()
                        tag = wl.take()
                        if tag is None:
                            state["done"] = True
                            if not pending:
                                nursery.cancel_scope.cancel()
                            return
                        now = rec.now()
                        if rec.first_submit is None:
                            rec.first_submit = now
                        pending.append((tag, now))
                        await conn.send_lines([wl.line(tag)])
                except _CONN_ERRORS:
                    state["broken"] = True
                    nursery.cancel_scope.cancel()

            async def reader() -> None:
                try:
                    while True:
                        if reply_timeout_s is None:
                            reply = await conn.read()
                        else:
                            reply = None
                            with trio.move_on_after(reply_timeout_s):
                                reply = await conn.read()
                            if reply is None:  # (cancelled reads leave nothing half-read: none was due)
                                if pending:
                                    raise ConnectionError(f"no reply from {peer.name} in {reply_timeout_s:g}s")
                                continue
                        tag, t_sent = pending.popleft()
                        now = rec.now()
                        if reply.ok:
                            rec.submissions.append(checker.Submission(tag, peer.name, checker.ACKED, reply.text.strip()))
                            rec.latencies.append(now - t_sent)
                            rec.last_ack = now
                        elif reply.code == "busy":
                            wl.busy += 1
                            wl.retry.append(tag)  # nothing was stored: send it again
                        else:
                            rec.submissions.append(checker.Submission(tag, peer.name, checker.REJECTED))
                            rec.errors.append(f"{peer.name}: ERR {reply.code} {reply.message[:100]}")
                        window.release()
                        if state["done"] and not pending:
                            nursery.cancel_scope.cancel()
                except _CONN_ERRORS:
                    state["broken"] = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(writer)
            nursery.start_soon(reader)
        for tag, _ in pending:  # sent, never answered: may or may not exist
            rec.submissions.append(checker.Submission(tag, peer.name, checker.UNKNOWN))
        pending.clear()
        await conn.aclose()
        if state["broken"]:
            if rotate:
                idx = (idx + 1) % len(targets)
            await trio.sleep(0.02)
        elif wl.busy and wl.retry:
            await trio.sleep(0.05)


async def _poll_peers(peer: PeerProc, rec: Record, interval_s: float) -> None:
    """PEERS every `interval_s`: membership transitions and load, forever."""
    while True:
        try:
            conn = await _open(peer.addr, timeout_s=1.0)
        except (*_CONN_ERRORS, trio.TooSlowError):
            await trio.sleep(interval_s)
            continue
        try:
            while True:
                with trio.fail_after(2.0):
                    await conn.send_lines(["PEERS"])
                    reply = _as_tuple(await conn.read(LINES), "PEERS")
                if reply[0] == "ok":
                    rec.peers_sample(peer.name, rec.now(), reply[1])
                await trio.sleep(interval_s)
        except (*_CONN_ERRORS, trio.TooSlowError):
            pass
        finally:
            await conn.aclose()
        await trio.sleep(interval_s)


async def _chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args) -> None:
    while True:
        await trio.sleep(args.kill_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        with trio.CancelScope(shield=True):  # never leave a peer down half-way
            t_kill = rec.now()
            victim.kill9()
            if args.restart_delay > 0:
                await trio.sleep(args.restart_delay)
            victim.spawn()
            ok = await victim.wait_listening(30.0)
            t_up = rec.now() if ok else None
            rec.kills.append(checker.Kill(victim.name, t_kill, t_up))
            rec.down[victim.name].append((t_kill, t_up if t_up is not None else float("inf")))
            _say(f"kill -9 {victim.name} at {t_kill:.2f}s; " + (f"listening again after {t_up - t_kill:.2f}s" if ok
                 else "did not come back"))
            if not ok:
                rec.errors.append(f"{victim.name} did not restart after kill (see {victim.log_path})")
                return


async def _states(cluster: ProcessCluster, ids: list[str], verb: str = "STATUS") -> dict[str, tuple]:
    """`verb` for each id at its home, pipelined per home; ids whose home
    could not be asked are left out."""
    by_home: dict[str, list[str]] = defaultdict(list)
    for job_id in ids:
        by_home[checker.home_of(job_id)].append(job_id)
    out: dict[str, tuple] = {}

    async def ask(home: str, chunk: list[str]) -> None:
        peer = cluster.by_name.get(home)
        if peer is None:
            return
        try:
            replies = await request_many(peer.addr, [f"{verb} {j}" for j in chunk])
        except (*_CONN_ERRORS, trio.TooSlowError):
            return
        out.update(zip(chunk, replies))

    async with trio.open_nursery() as nursery:
        for home, chunk in by_home.items():
            nursery.start_soon(ask, home, chunk)
    return out


async def _states_retrying(cluster: ProcessCluster, ids: list[str], verb: str, tries: int = 4) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i in range(tries):
        todo = [j for j in ids if j not in out]
        if not todo:
            break
        if i:
            await trio.sleep(0.5)
        out.update(await _states(cluster, todo, verb))
    return out


def _state_of(reply: tuple) -> str | None:
    if reply[0] != "ok":
        return None
    parts = reply[1].split(" ")
    return parts[1] if len(parts) > 1 else None


async def drain(ask_states, rec: Record, deadline: float) -> float | None:
    """Wait until every acknowledged job is final at its home; the time it was
    seen so, or None at the deadline. `ask_states(ids)` returns the STATUS
    replies it could get, by id (homes it could not reach are asked again)."""
    open_ids = {s.job_id for s in rec.submissions if s.outcome == checker.ACKED}
    next_note = rec.now() + 2.0
    replies: dict[str, tuple] = {}
    while open_ids:
        if rec.now() >= next_note:
            next_note = rec.now() + 2.0
            some = sorted(open_ids)[:3]
            _say(f"{rec.now():.1f}s: {len(open_ids)} acknowledged jobs not finished yet, e.g. "
                 + "; ".join(" ".join(replies[j][1:]) if j in replies else f"{j} (no answer)" for j in some))
        if rec.now() > deadline:
            return None
        replies = await ask_states(sorted(open_ids))
        for job_id, reply in replies.items():
            if _state_of(reply) in ("done", "failed", "cancelled") or reply[:2] == ("err", "not-found"):
                open_ids.discard(job_id)  # (not found at its home: lost, and waiting will not help)
        if open_ids:
            await trio.sleep(0.2)
    return rec.now()


async def _settle(cluster: ProcessCluster, rec: Record, timeout_s: float) -> bool:
    """Wait until every peer's view shows every other peer alive."""
    names = [p.name for p in cluster.peers]
    with trio.move_on_after(timeout_s):
        while True:
            ok = all(rec.transitions.get((o, m)) and rec.transitions[(o, m)][-1][1] == "alive"
                     for o in names for m in names if o != m)
            if ok:
                return True
            await trio.sleep(0.1)
    return False



async def _collect(cluster: ProcessCluster, rec: Record, wl: Workload) -> tuple[dict, dict]:
    """Every job every home has issued (STATUS, then RESULT of the final
    ones), and every peer's LIST."""
    acked_max: dict[str, int] = defaultdict(int)
    for s in rec.submissions:
        if s.job_id:
            acked_max[checker.home_of(s.job_id)] = max(acked_max[checker.home_of(s.job_id)],
                                                       int(s.job_id.rpartition("-")[2]))
    observed: dict[str, checker.Observed] = {}
    listed: dict[str, list[str]] = {}
    for peer in cluster.peers:
        issued = acked_max[peer.name]
        for _ in range(3):
            try:
                probe = await request_many(peer.addr, ["STATS", "LIST 1000"])
                break
            except (*_CONN_ERRORS, trio.TooSlowError):
                await trio.sleep(0.5)
        else:
            rec.errors.append(f"could not ask {peer.name} at the end")
            continue
        if probe[0][0] == "ok":
            stats = dict(line.split("=", 1) for line in probe[0][1] if "=" in line)
            issued = max(issued, int(stats.get("issued", 0)))
        if probe[1][0] == "ok":
            listed[peer.name] = [line.split(" ", 1)[0] for line in probe[1][1]]
        ids = [f"{peer.name}-{k}" for k in range(1, issued + 1)]
        statuses = await _states_retrying(cluster, ids, "STATUS")
        results = await _states_retrying(cluster, [j for j in ids if _state_of(statuses.get(j, ("err",))) in
                                                   ("done", "failed", "cancelled")], "RESULT")
        for job_id in ids:
            status = statuses.get(job_id)
            if status is None:
                rec.errors.append(f"no answer about {job_id}")
                continue
            if status[0] != "ok":
                continue  # not found: absent
            parts = status[1].split(" ")
            fields = dict(x.split("=", 1) for x in parts[2:] if "=" in x)
            state, attempt, output = parts[1], int(fields.get("attempt", "1")), None
            result = results.get(job_id)
            if result is not None and result[0] == "ok":
                rparts = result[1].split(" ")
                rfields = dict(x.split("=", 1) for x in rparts[2:] if "=" in x)
                state, attempt, output = rparts[1], int(rfields.get("attempt", attempt)), result[2]
            runtime = fields.get("runtime_ms")
            observed[job_id] = checker.Observed(job_id, state, attempt, fields.get("executor", ""), output,
                                                int(runtime) if runtime and runtime.isdigit() else None)
    return observed, listed


@dataclass
class Outcome:
    report: dict
    ok: bool


async def run(args, workdir: str) -> Outcome:
    rng = random.Random(args.seed)
    cluster = ProcessCluster(args.peers, args.slots, workdir, args.verbose)
    rec = Record(time.monotonic())
    wl = Workload(args.jobs, args.job)
    try:
        await cluster.start()
        _say(f"{args.peers} peers up in {rec.now():.2f}s: " + " ".join(f"{p.name}={p.addr}" for p in cluster.peers))
        deadline = rec.now() + args.timeout
        timed_out, t_done = False, None
        async with trio.open_nursery() as watchers:
            for p in cluster.peers:
                watchers.start_soon(_poll_peers, p, rec, 0.05)
            await _settle(cluster, rec, 10.0)
            t_start = rec.now()
            with trio.move_on_after(args.timeout) as scope:
                async with trio.open_nursery() as chaos_nursery:
                    if args.chaos == "kill-restart":
                        chaos_nursery.start_soon(_chaos, cluster, rec, rng, args)
                    targets = cluster.peers[:1] if args.submit_to == "one" else cluster.peers
                    async with trio.open_nursery() as clients:
                        for k in range(args.clients):
                            clients.start_soon(_client, k, targets, wl, rec, args.in_flight, args.submit_to == "all")
                    t_submitted = rec.now()
                    _say(f"{sum(1 for s in rec.submissions if s.outcome == checker.ACKED)} submissions acknowledged "
                         f"in {t_submitted - t_start:.2f}s; waiting for them to finish")
                    t_done = await drain(lambda ids: _states(cluster, ids), rec, deadline)
                    while args.chaos != "none" and len(rec.kills) < args.min_kills and rec.now() < deadline:
                        await trio.sleep(0.1)
                    chaos_nursery.cancel_scope.cancel()
            if scope.cancelled_caught or t_done is None:
                timed_out = True
                t_done = None
                _say(f"timeout after {args.timeout:g}s: stopping the workload and checking what there is")
            settled = await _settle(cluster, rec, 15.0)
            if not settled:
                rec.errors.append("the cluster's views did not all show every peer alive within 15 s after the chaos")
            t_end = rec.now()
            observed, listed = await _collect(cluster, rec, wl)
            watchers.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            cluster.close()
    verdict = checker.check(rec.submissions, observed, listed, tagged=wl.tagged)
    report = _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled)
    return Outcome(report, verdict.ok and not timed_out)


def _report(args, rec: Record, wl: Workload, verdict: checker.Verdict, observed: dict, t_start: float,
            t_done: float | None, t_end: float, timed_out: bool, settled: bool) -> dict:
    summary = verdict.summary()
    first = rec.first_submit if rec.first_submit is not None else t_start
    done_ids = [s.job_id for s in rec.submissions if s.outcome == checker.ACKED
                and observed.get(s.job_id) is not None and observed[s.job_id].state == "done"]
    makespan = (t_done - first) if t_done is not None else None
    if wl.sleep_ms is not None:
        work_s = len(done_ids) * wl.sleep_ms / 1000
    else:
        runtimes = [observed[j].runtime_ms for j in done_ids if observed[j].runtime_ms is not None]
        work_s = sum(runtimes) / 1000 if runtimes else None  # measured run time of the final attempts
    ideal = work_s / (args.peers * args.slots) if work_s is not None else None
    series = checker.imbalance_series(dict(rec.loads), dict(rec.down), first, t_done if t_done is not None else t_end)
    values = [v for _, v in series]
    timings = checker.kill_timings(rec.kills, dict(rec.transitions), [f"p{i + 1}" for i in range(args.peers)])
    detect = [k["detect_all_s"] for k in timings if k["detect_all_s"] is not None]
    detect_first = [k["detect_first_s"] for k in timings if k["detect_first_s"] is not None]
    rejoin = [k["rejoin_all_s"] for k in timings if k["rejoin_all_s"] is not None]
    restart = [k["restart_s"] for k in timings if k["restart_s"] is not None]

    def r(x, nd=3):
        return None if x is None else round(x, nd)

    report = {
        **{k: summary[k] for k in ("lost", "duplicated", "unexpected", "mismatched", "reexecuted", "extra_attempts",
                                   "acked", "unknown", "recovered", "rejected")},
        "ok": verdict.ok and not timed_out,
        "timed_out": timed_out,
        "settled": settled,
        "peers": args.peers, "slots": args.slots, "jobs": args.jobs, "job": args.job, "seed": args.seed,
        "submit_to": args.submit_to, "chaos": args.chaos, "clients": args.clients,
        "busy_retries": wl.busy,
        "submit_s": r(rec.last_ack - first if rec.last_ack is not None else None, 2),
        "acks_per_s": r(len(rec.latencies) / (rec.last_ack - first) if rec.last_ack and rec.last_ack > first else None, 1),
        "ack_p50_ms": r((checker.percentile(rec.latencies, 0.5) or 0) * 1000),
        "ack_p99_ms": r((checker.percentile(rec.latencies, 0.99) or 0) * 1000),
        "makespan_s": r(makespan, 2),
        "jobs_per_s": r(len(done_ids) / makespan if makespan else None, 1),
        "ideal_s": r(ideal, 2),
        "makespan_over_ideal": r(makespan / ideal if makespan and ideal else None, 2),
        "imbalance_mean": r(sum(values) / len(values) if values else None, 2),
        "imbalance_p99": checker.percentile(values, 0.99),
        "imbalance_max": max(values) if values else None,
        "kills": len(rec.kills),
        "restart_median_s": r(checker.median(restart)),
        "detect_median_s": r(checker.median(detect)),
        "detect_max_s": r(max(detect) if detect else None),
        "detect_first_median_s": r(checker.median(detect_first)),
        "kills_never_declared_dead": sum(1 for k in timings if k["detect_first_s"] is None),
        "rejoin_median_s": r(checker.median(rejoin)),
        "rejoin_max_s": r(max(rejoin) if rejoin else None),
        "lost_states": summary["lost_states"],
        "examples": summary["examples"],
        "kill_log": timings,
        "errors": rec.errors[:20],
    }
    if args.plot:
        report["plot"] = _plot(args.plot, rec, first, t_end)
    return report


def _plot(path: str, rec: Record, t_start: float, t_end: float) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("--plot: matplotlib is not installed (pip install matplotlib); no plot drawn")
        return None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for name in sorted(rec.loads):
        pts = []
        for t, v in rec.loads[name]:
            if t_start - 1 <= t <= t_end:
                if pts and t - pts[-1][0] > 0.3:
                    pts.append((t, float("nan")))  # no samples: the peer was down; break the line
                pts.append((t, v))
        if pts:
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=name, linewidth=0.9)
    for k in rec.kills:
        ax.axvline(k.t_kill, color="red", linestyle=":", linewidth=0.8)
        ax.text(k.t_kill, ax.get_ylim()[1], f" {k.peer}", color="red", fontsize=7, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("queued + running")
    ax.set_title("load per peer (red: kill -9 + restart)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print_report(rep: dict) -> None:
    def f(x, unit=""):
        return "-" if x is None else f"{x}{unit}"

    lines = verdict_lines(rep) + [
        f"re-executed  {rep['reexecuted']} jobs ({rep['extra_attempts']} extra attempts)",
        f"throughput   {f(rep['jobs_per_s'])} jobs/s end to end; acks {f(rep['acks_per_s'])}/s, "
        f"ack p50 {f(rep['ack_p50_ms'], ' ms')} p99 {f(rep['ack_p99_ms'], ' ms')}",
        f"makespan     {f(rep['makespan_s'], ' s')} vs ideal {f(rep['ideal_s'], ' s')} = {f(rep['makespan_over_ideal'], 'x')}",
        f"imbalance    max-min of queued+running: mean {f(rep['imbalance_mean'])}, p99 {f(rep['imbalance_p99'])}, "
        f"max {f(rep['imbalance_max'])}",
        f"kills        {rep['kills']}: restart median {f(rep['restart_median_s'], ' s')}; dead in every view: median "
        f"{f(rep['detect_median_s'], ' s')} max {f(rep['detect_max_s'], ' s')} (first view median "
        f"{f(rep['detect_first_median_s'], ' s')}; {rep['kills_never_declared_dead']} restarted before any view "
        f"declared them dead)",
        f"rejoin       alive (new incarnation) in every view: median {f(rep['rejoin_median_s'], ' s')} max "
        f"{f(rep['rejoin_max_s'], ' s')}",
    ]
    lines += findings_lines(rep)
    print("\n".join(lines), file=sys.stderr, flush=True)


def verdict_lines(rep: dict) -> list[str]:
    """The checker's verdict and the submissions, as every harness reports them."""
    return [
        f"verdict      {'OK' if rep['ok'] else 'FAILED'}: lost={rep['lost']} duplicated={rep['duplicated']} "
        f"unexpected={rep['unexpected']} mismatched={rep['mismatched']}" + (" (TIMED OUT)" if rep["timed_out"] else ""),
        f"submissions  acked={rep['acked']} unknown={rep['unknown']} (recovered {rep['recovered']}) "
        f"rejected={rep['rejected']} busy-retries={rep['busy_retries']}",
    ]


def findings_lines(rep: dict) -> list[str]:
    """Examples of whatever broke, and the harness's own errors."""
    lines = []
    if rep["lost"]:
        lines.append(f"lost         states {rep['lost_states']}; e.g. {rep['examples']['lost']}")
    for key in ("duplicated", "unexpected", "mismatched"):
        if rep[key]:
            lines.append(f"{key:12s} e.g. {rep['examples'][key]}")
    lines += [f"error        {e}" for e in rep["errors"]]
    return lines


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, bare or wrapped in the exception group trio raises it in when
    it lands inside a nursery."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=3, help="peer processes (default 3)")
    p.add_argument("--slots", type=int, default=2, help="slots of each peer (default 2)")
    p.add_argument("--jobs", type=int, default=1000, help="submissions (default 1000)")
    p.add_argument("--job", default="10", help="an integer: an in-peer sleep of that many ms; otherwise a shell "
                                                "command, run as '<command>; echo <n>' (default 10)")
    p.add_argument("--submit-to", choices=("one", "all"), default="all", help="clients talk to p1 only, or spread")
    p.add_argument("--clients", type=int, default=16, help="concurrent client connections (default 16)")
    p.add_argument("--in-flight", type=int, default=32, help="pipelined submissions per client (default 32)")
    p.add_argument("--chaos", choices=("none", "kill-restart"), default="none")
    p.add_argument("--kill-every", type=float, default=2.0, help="mean seconds between kills, ±25%% jitter (default 2)")
    p.add_argument("--restart-delay", type=float, default=0.0, help="seconds a killed peer stays down (default 0)")
    p.add_argument("--min-kills", type=int, default=0, help="keep the chaos going until this many kills happened")
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
