"""One run of the partition harness: the peers, each in its namespace (with a
cluster secret, as they listen beyond loopback), a watcher thread inside each
namespace, the cutter, and the chaos harness's clients and drain; then the
check. Every peer and namespace is removed on every way out (finally,
atexit, SIGTERM/SIGHUP).
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

import trio

from executor.client import LINES, Client, stats_of
from sim import checker
from sim.chaos.collect import _collect, _settle, _states, drain
from sim.chaos.procs import PeerProc, ProcessCluster, _open
from sim.chaos.run import Outcome, _pacer
from sim.chaos.workload import Record, Workload, _client
from sim.partition.net import _ROOT, PORT, Net, _live_nets, _say, enter_netns
from sim.partition.report import Cut, _report

# ---------------------------------------------------------------------------
# Cleanup on every way out


_live_clusters: list[ProcessCluster] = []


def _kill_all() -> None:
    """SIGKILL every peer's process group, then remove every Net."""
    for cluster in list(_live_clusters):
        for p in cluster.peers:
            if p.proc is not None and p.proc.poll() is None:
                try:
                    os.killpg(p.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                p.proc.wait()
    for net in list(_live_nets):
        net.destroy()


def _on_signal(signum, frame) -> None:
    _kill_all()
    os._exit(128 + signum)


atexit.register(_kill_all)


def _stop(cluster: ProcessCluster) -> None:
    """SIGTERM every peer, SIGKILL its process group after 8 s (jobs too)."""
    cluster.close()
    for p in cluster.peers:
        if p.proc is not None:
            try:
                os.killpg(p.proc.pid, signal.SIGKILL)  # anything its jobs left behind in the group
            except (ProcessLookupError, PermissionError):
                pass
    if cluster in _live_clusters:
        _live_clusters.remove(cluster)


# ---------------------------------------------------------------------------
# Peer options: a secret where the peers take one, else --insecure


def peer_security(workdir: str) -> tuple[dict[str, str], list[str], str]:
    """(env, extra args, what) for peers listening beyond loopback, found
    once from `node --help`: a cluster secret in $PEERJOBS_SECRET (so the
    links between namespaces are authenticated), else --secret-file, else
    --insecure, else nothing (peers of before the exposure rule)."""
    res = subprocess.run([sys.executable, "-m", "executor.client.cli", "node", "--help"], cwd=_ROOT,
                         capture_output=True, text=True, timeout=60)
    text = res.stdout + res.stderr
    secret = secrets.token_hex(24)
    if "PEERJOBS_SECRET" in text:
        return {"PEERJOBS_SECRET": secret}, [], "cluster secret ($PEERJOBS_SECRET)"
    if "--secret-file" in text:
        path = os.path.join(workdir, "secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return {}, ["--secret-file", path], "cluster secret (--secret-file)"
    if "--insecure" in text:
        return {}, ["--insecure"], "--insecure"
    return {}, [], "no authentication (the peer has none)"


# ---------------------------------------------------------------------------
# Watching every peer from inside its own namespace


class Observer:
    """A thread per peer, inside the peer's namespace, asking its own address
    PEERS every `interval_s`: it sees the peer's view during a cut too, when
    the harness cannot reach it. Samples go into the Record."""

    def __init__(self, net: Net, peers: list[PeerProc], rec: Record, interval_s: float = 0.05) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(ns, p, rec, interval_s), daemon=True)
                        for ns, p in zip(net.ns, peers)]
        self.lock = threading.Lock()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=3)

    def _watch(self, ns: str, peer: PeerProc, rec: Record, interval_s: float) -> None:
        enter_netns(ns)
        while not self.stop.is_set():
            try:
                with Client(peer.addr, timeout_s=1.0) as c:
                    while not self.stop.is_set():
                        lines = c.peers()
                        with self.lock:
                            rec.peers_sample(peer.name, time.monotonic() - rec.t0, lines)
                        self.stop.wait(interval_s)
            except Exception:  # not listening yet, or stopped: try again
                self.stop.wait(interval_s)


# ---------------------------------------------------------------------------
# The run


async def _cutter(net: Net, cluster: ProcessCluster, rec: Record, cuts: list[Cut], rng: random.Random,
                  args) -> None:
    """Every gap, cut a random minority off for --cut-for seconds, then heal,
    then wait until every view shows every peer alive again (at most 30 s),
    so that each cut is measured from a healed cluster. The heal is
    shielded: no way out of here leaves a link down."""
    peers = cluster.peers
    n = len(peers)
    while True:
        await trio.sleep(args.cut_every * rng.uniform(0.75, 1.25))
        size = max(1, min(args.cut_size or rng.randint(1, max(1, (n - 1) // 2)), n - 1))
        idx = sorted(rng.sample(range(1, n + 1), size))
        names = tuple(peers[i - 1].name for i in idx)
        t_cut = rec.now()
        try:
            with trio.CancelScope(shield=True):
                for i in idx:
                    net.cut(i)
            _say(f"{t_cut:.2f}s: cut {' '.join(names)} off for {args.cut_for:g}s")
            for i in idx:
                rec.down[peers[i - 1].name].append((t_cut, float("inf")))
            await trio.sleep(args.cut_for)
        finally:
            with trio.CancelScope(shield=True):
                for i in idx:
                    net.heal(i)
                t_heal = rec.now()
                for i in idx:
                    spans = rec.down[peers[i - 1].name]
                    if spans and spans[-1][1] == float("inf"):
                        spans[-1] = (spans[-1][0], t_heal)
                cuts.append(Cut(names, t_cut, t_heal))
                _say(f"{t_heal:.2f}s: healed {' '.join(names)} after {t_heal - t_cut:.2f}s")
        if await _settle(cluster, rec, 30.0):
            _say(f"{rec.now():.2f}s: every view shows every peer alive again")
        else:
            rec.errors.append(f"views not all alive 30 s after the heal at {t_heal:.2f}s")


async def _stats(peer: PeerProc) -> dict:
    try:
        with trio.fail_after(3.0):
            conn = await _open(peer.addr)
            try:
                await conn.send_lines(["STATS"])
                return stats_of(await conn.read(LINES))
            finally:
                await conn.aclose()
    except Exception:  # a figure, not a verdict
        return {}


async def run(args, workdir: str, net: Net) -> Outcome:
    rng = random.Random(args.seed)
    env, extra, security = peer_security(workdir)
    ip = shutil.which("ip")
    seed = f"{net.addr(1)}:{PORT}"
    peers = [PeerProc(workdir, f"p{i}", PORT, args.slots, [] if i == 1 else [seed], args.verbose,
                         host=net.addr(i), prefix=[ip, "netns", "exec", net.ns[i - 1]], env=env, extra_args=extra)
             for i in range(1, args.peers + 1)]
    cluster = ProcessCluster(args.peers, args.slots, workdir, args.verbose, peers=peers)
    _live_clusters.append(cluster)
    rec = Record(time.monotonic())
    wl = Workload(args.jobs, args.job)
    cuts: list[Cut] = []
    observer = Observer(net, peers, rec)
    t_start = t_end = 0.0
    settled = False
    try:
        await cluster.start()
        _say(f"{args.peers} peers up in {rec.now():.2f}s, {security}, bridge {net.bridge} {net.subnet}: "
             + " ".join(f"{p.name}={p.addr}@{ns}" for p, ns in zip(peers, net.ns)))
        observer.start()
        deadline = rec.now() + args.timeout
        timed_out, t_done = False, None
        if not await _settle(cluster, rec, 15.0):
            raise RuntimeError("the peers did not all see each other alive within 15 s of starting")
        t_start = rec.now()
        with trio.move_on_after(args.timeout) as scope:
            async with trio.open_nursery() as chaos:
                if args.cut_for > 0:
                    chaos.start_soon(_cutter, net, cluster, rec, cuts, rng, args)
                pace = _pacer(wl, args.rate, 0.0)  # no --duration here: only `rate`
                async with trio.open_nursery() as clients:
                    for k in range(args.clients):
                        clients.start_soon(functools.partial(_client, k, peers, wl, rec, args.in_flight, True,
                                                             reply_timeout_s=args.reply_timeout, rotate_after=1,
                                                             pace=pace))
                _say(f"{sum(1 for s in rec.submissions if s.outcome == checker.ACKED)} submissions acknowledged "
                     f"in {rec.now() - t_start:.2f}s; waiting for them to finish")
                t_done = await drain(lambda ids: _states(cluster, ids, timeout_s=2.0), rec, deadline)
                while args.cut_for > 0 and len(cuts) < args.min_cuts and rec.now() < deadline:
                    await trio.sleep(0.1)
                chaos.cancel_scope.cancel()
        if scope.cancelled_caught or t_done is None:
            timed_out, t_done = True, None
            _say(f"timeout after {args.timeout:g}s: stopping the workload and checking what there is")
        settled = await _settle(cluster, rec, args.heal_timeout)
        if not settled:
            rec.errors.append(f"the views did not all show every peer alive within {args.heal_timeout:g} s after "
                              f"the last heal: the cluster did not heal")
        t_end = rec.now()
        observed, listed = await _collect(cluster, rec, wl)
        stats = [await _stats(p) for p in peers]
    finally:
        with trio.CancelScope(shield=True):
            observer.close()
            _stop(cluster)
    verdict = checker.check(rec.submissions, observed, listed, tagged=wl.tagged)
    report = _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled, cuts, stats,
                     security, net)
    return Outcome(report, report["ok"])

