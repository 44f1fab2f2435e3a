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
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import fcntl
import functools
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import trio

from executor.client import LINES, Client, stats_of
from sim import checker
from sim import cluster as cl

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 7000
NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: benchmarking, never routed
_CLONE_NEWNET = 0x40000000
_NS_RE = re.compile(r"^pj(\d+)-\d+$")
_LINK_RE = re.compile(r"^pj(?:br(\d+)|(\d+)v\d+)$")
_LOCK = "/run/peerjobs-netns.lock"


def _say(*parts) -> None:
    print("partition:", *parts, file=sys.stderr, flush=True)


class Unavailable(Exception):
    """This machine cannot run the scenario; the message says why."""


# ---------------------------------------------------------------------------
# The network: namespaces, bridge, veths


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def unavailable_reason() -> str | None:
    """Why this machine cannot run the scenario at all, or None (the rest is
    found out by trying: `Net.create` raises `Unavailable`)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root to create network namespaces, a bridge and veth links (run as root)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2), which is not installed"
    res = _ip("netns", "list", check=False)
    if res.returncode != 0:
        return f"`ip netns` does not work here: {res.stderr.strip()}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _our_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and _NS_RE.match(line.split()[0])]


def _our_links() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if _LINK_RE.match(name):
                names.append(name)
    return names


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def _kill_ns_processes(ns: str) -> None:
    for _ in range(3):
        pids = _ns_pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_leftovers() -> list[str]:
    """Namespaces and links named like ours whose run's pid is dead: a run
    that crashed before its cleanup. What is removed."""
    removed = []
    for name in _our_links():
        m = _LINK_RE.match(name)
        pid = int(m.group(1) or m.group(2))
        if pid != os.getpid() and not _pid_alive(pid):
            if _ip("link", "del", name, check=False).returncode == 0:
                removed.append(name)
    for ns in _our_namespaces():
        pid = int(_NS_RE.match(ns).group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            _kill_ns_processes(ns)
            if _ip("netns", "del", ns, check=False).returncode == 0:
                removed.append(ns)
    return removed


_live_nets: list[Net] = []


class Net:
    """One bridge, N namespaces, N veth pairs. Only what this object created
    is ever deleted."""

    def __init__(self, n: int) -> None:
        pid = os.getpid()
        self.n = n
        self.bridge = f"pjbr{pid}"
        self.ns = [f"pj{pid}-{i}" for i in range(1, n + 1)]
        self.veth = [f"pj{pid}v{i}" for i in range(1, n + 1)]
        self.subnet: ipaddress.IPv4Network | None = None
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self.cut_now: set[int] = set()

    def addr(self, i: int) -> str:
        """The address of peer i (1-based); 254 is the harness (the bridge)."""
        return str(self.subnet.network_address + i)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = []
        for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
            m = re.search(r"inet (\S+)", line)
            if m:
                used.append(ipaddress.ip_interface(m.group(1)).network)
        for line in _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines():
            dest = line.split()[0] if line.split() else ""
            if dest and dest[0].isdigit():
                try:
                    used.append(ipaddress.ip_network(dest, strict=False))
                except ValueError:
                    pass
        subnets = list(NETWORK.subnets(new_prefix=24))
        start = os.getpid() % len(subnets)
        for k in range(len(subnets)):
            cand = subnets[(start + k) % len(subnets)]
            if not any(cand.overlaps(u) for u in used):
                return cand
        raise Unavailable("no free /24 left in 198.18.0.0/15 for the bridge")

    def create(self) -> None:
        """Build it all; on any failure undo what was made and raise
        `Unavailable` with the reason."""
        _live_nets.append(self)
        os.makedirs(os.path.dirname(_LOCK), exist_ok=True)
        with open(_LOCK, "a") as lock:  # two runs at once must not pick one subnet
            fcntl.flock(lock, fcntl.LOCK_EX)
            removed = remove_leftovers()
            if removed:
                _say("removed leftovers of an earlier run: " + " ".join(removed))
            self.subnet = self._free_subnet()
            try:
                self._build()
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                self.destroy()
                raise Unavailable(str(exc)) from None
        try:
            self._check_reachable()
        except Unavailable:
            self.destroy()
            raise

    def _build(self) -> None:
        prefix = self.subnet.prefixlen
        try:
            _ip("netns", "add", self.ns[0])
        except RuntimeError as exc:
            raise RuntimeError(f"cannot create a network namespace ({exc})") from None
        self._made_ns.append(self.ns[0])
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
        except RuntimeError as exc:
            raise RuntimeError(f"cannot create a Linux bridge ({exc})") from None
        self._made_links.append(self.bridge)
        _ip("addr", "add", f"{self.addr(254)}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.ns, self.veth), start=1):
            if ns not in self._made_ns:
                _ip("netns", "add", ns)
                self._made_ns.append(ns)
            try:
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            except RuntimeError as exc:
                raise RuntimeError(f"cannot create a veth pair ({exc})") from None
            self._made_links.append(veth)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/{prefix}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _check_reachable(self) -> None:
        """Peer 1's namespace must be reachable from peer 2's and from here
        (a host firewall may filter bridged traffic)."""
        deadline = time.monotonic() + 5.0  # the bridge ports take a moment to forward
        last = None
        while time.monotonic() < deadline:
            try:
                listener = in_netns(self.ns[0], lambda: socket.create_server((self.addr(1), 0)))
                port = listener.getsockname()[1]
                try:
                    socket.create_connection((self.addr(1), port), timeout=1).close()
                    if self.n > 1:
                        in_netns(self.ns[1], lambda: socket.create_connection((self.addr(1), port), timeout=1)).close()
                    return
                finally:
                    listener.close()
            except OSError as exc:
                last = exc
                time.sleep(0.1)
        br_nf = _read("/proc/sys/net/bridge/bridge-nf-call-iptables")
        raise Unavailable(f"namespaces on bridge {self.bridge} cannot reach each other ({last}); the host may filter "
                          f"bridged traffic (bridge-nf-call-iptables={br_nf or '?'})")

    def cut(self, i: int) -> None:
        """Take peer i (1-based) off the bridge."""
        _ip("link", "set", self.veth[i - 1], "down")
        self.cut_now.add(i)

    def heal(self, i: int) -> None:
        _ip("link", "set", self.veth[i - 1], "up")
        self.cut_now.discard(i)

    def destroy(self) -> None:
        """Kill whatever still runs in our namespaces, delete our veths, the
        bridge and the namespaces. Idempotent."""
        for ns in list(self._made_ns):
            _kill_ns_processes(ns)
        for name in sorted(self._made_links, key=lambda x: x == self.bridge):  # veths (both ends) first
            _ip("link", "del", name, check=False)
            self._made_links.remove(name)
        for ns in list(self._made_ns):
            _ip("netns", "del", ns, check=False)
            self._made_ns.remove(ns)
        if self in _live_nets:
            _live_nets.remove(self)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn):
    """fn() in a new thread that has entered namespace `ns`; its result. A
    socket made there stays in `ns` whichever thread uses it."""
    box: dict = {}

    def target() -> None:
        try:
            enter_netns(ns)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into network namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Cleanup on every way out


_live_clusters: list[cl.ProcessCluster] = []


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


def _stop(cluster: cl.ProcessCluster) -> None:
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
    res = subprocess.run([sys.executable, "-m", "executor.cli", "node", "--help"], cwd=_ROOT,
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

    def __init__(self, net: Net, peers: list[cl.PeerProc], rec: cl.Record, interval_s: float = 0.05) -> None:
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

    def _watch(self, ns: str, peer: cl.PeerProc, rec: cl.Record, interval_s: float) -> None:
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
# Cuts and what each side saw


@dataclass(frozen=True)
class Cut:
    isolated: tuple[str, ...]
    t_cut: float
    t_heal: float | None  # None: never healed (should not happen)


def _first(changes, t_from: float, t_to: float, state: str) -> float | None:
    for t, s, _ in changes:
        if t_from < t < t_to and s == state:
            return t
    return None


def _state_at(changes, t: float) -> str | None:
    state = None
    for tc, s, _ in changes:
        if tc <= t:
            state = s
    return state


def cut_timings(cuts: list[Cut], transitions: dict, peers: list[str]) -> list[dict]:
    """For each cut: how long until the majority saw each isolated peer `dead`
    and the isolated peers saw each majority peer dead (seconds after the
    cut); and after the heal, until each saw the other `alive` again (seconds
    after the heal; 0 if it never stopped being alive). `*_first_s` is the
    first pair, `*_all_s` the last (None if some pair never did before the
    next cut)."""
    out = []
    for k, c in enumerate(cuts):
        horizon = cuts[k + 1].t_cut if k + 1 < len(cuts) else float("inf")
        iso = set(c.isolated)
        rest = [p for p in peers if p not in iso]
        heal = c.t_heal if c.t_heal is not None else horizon
        row: dict = {"isolated": list(c.isolated), "t_cut": round(c.t_cut, 3),
                     "cut_s": None if c.t_heal is None else round(c.t_heal - c.t_cut, 3)}
        for side, pairs in (("majority", [(o, m) for o in rest for m in iso]),
                            ("minority", [(o, m) for o in iso for m in rest])):
            dead, alive = [], []
            for obs, member in pairs:
                changes = transitions.get((obs, member), [])
                t = _first(changes, c.t_cut, horizon, "dead")
                dead.append(None if t is None else t - c.t_cut)
                if c.t_heal is None:
                    alive.append(None)
                elif _state_at(changes, heal) == "alive":
                    alive.append(0.0)
                else:
                    t = _first(changes, heal, horizon, "alive")
                    alive.append(None if t is None else t - heal)
            row[f"{side}_sees_dead_first_s"] = _r(min((x for x in dead if x is not None), default=None))
            row[f"{side}_sees_dead_all_s"] = _r(max(dead) if dead and None not in dead else None)
            row[f"{side}_sees_alive_all_s"] = _r(max(alive) if alive and None not in alive else None)
        # Same side, never cut from each other, yet declared dead (a rumour from across the cut)
        collateral, longest = [], 0.0
        for group in (iso, set(rest)):
            for obs in group:
                for member in group - {obs}:
                    changes = transitions.get((obs, member), [])
                    t = _first(changes, c.t_cut, horizon, "dead")
                    if t is not None:
                        back = _first(changes, t, horizon, "alive")
                        collateral.append(f"{obs}>{member}@{t - c.t_cut:+.2f}s")
                        longest = max(longest, (back if back is not None else horizon) - t)
        row["collateral_dead"] = collateral
        row["collateral_dead_longest_s"] = _r(longest) if collateral else None
        out.append(row)
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ---------------------------------------------------------------------------
# The run


def _pacer(rate: float):
    """An async callable that lets `rate` submissions per second through (0: all)."""
    state = {"next": None}

    async def pace() -> None:
        if rate <= 0:
            return
        now = trio.current_time()
        t = now if state["next"] is None else max(state["next"], now)
        state["next"] = t + 1.0 / rate
        await trio.sleep(t - now)

    return pace


async def _cutter(net: Net, cluster: cl.ProcessCluster, rec: cl.Record, cuts: list[Cut], rng: random.Random,
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
        if await cl._settle(cluster, rec, 30.0):
            _say(f"{rec.now():.2f}s: every view shows every peer alive again")
        else:
            rec.errors.append(f"views not all alive 30 s after the heal at {t_heal:.2f}s")


async def _states(peers: dict[str, cl.PeerProc], ids: list[str], timeout_s: float) -> dict[str, tuple]:
    """STATUS of each id at its home; a home that does not answer within
    `timeout_s` (cut off) is skipped this round."""
    by_home: dict[str, list[str]] = {}
    for job_id in ids:
        by_home.setdefault(checker.home_of(job_id), []).append(job_id)
    out: dict[str, tuple] = {}

    async def ask(home: str, chunk: list[str]) -> None:
        peer = peers.get(home)
        if peer is None:
            return
        with trio.move_on_after(timeout_s):
            try:
                replies = await cl.request_many(peer.addr, [f"STATUS {j}" for j in chunk], timeout_s=timeout_s)
            except (*cl._CONN_ERRORS, trio.TooSlowError):
                return
            out.update(zip(chunk, replies))

    async with trio.open_nursery() as nursery:
        for home, chunk in by_home.items():
            nursery.start_soon(ask, home, chunk)
    return out


async def _stats(peer: cl.PeerProc) -> dict:
    try:
        with trio.fail_after(3.0):
            conn = await cl._open(peer.addr)
            try:
                await conn.send_lines(["STATS"])
                return stats_of(await conn.read(LINES))
            finally:
                await conn.aclose()
    except Exception:  # a figure, not a verdict
        return {}


async def run(args, workdir: str, net: Net) -> cl.Outcome:
    rng = random.Random(args.seed)
    env, extra, security = peer_security(workdir)
    ip = shutil.which("ip")
    seed = f"{net.addr(1)}:{PORT}"
    peers = [cl.PeerProc(workdir, f"p{i}", PORT, args.slots, [] if i == 1 else [seed], args.verbose,
                         host=net.addr(i), prefix=[ip, "netns", "exec", net.ns[i - 1]], env=env, extra_args=extra)
             for i in range(1, args.peers + 1)]
    cluster = cl.ProcessCluster(args.peers, args.slots, workdir, args.verbose, peers=peers)
    _live_clusters.append(cluster)
    rec = cl.Record(time.monotonic())
    wl = cl.Workload(args.jobs, args.job)
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
        if not await cl._settle(cluster, rec, 15.0):
            raise RuntimeError("the peers did not all see each other alive within 15 s of starting")
        t_start = rec.now()
        by_name = {p.name: p for p in peers}
        with trio.move_on_after(args.timeout) as scope:
            async with trio.open_nursery() as chaos:
                if args.cut_for > 0:
                    chaos.start_soon(_cutter, net, cluster, rec, cuts, rng, args)
                pace = _pacer(args.rate)
                async with trio.open_nursery() as clients:
                    for k in range(args.clients):
                        clients.start_soon(functools.partial(cl._client, k, peers, wl, rec, args.in_flight, True,
                                                             reply_timeout_s=args.reply_timeout, rotate_after=1,
                                                             pace=pace))
                _say(f"{sum(1 for s in rec.submissions if s.outcome == checker.ACKED)} submissions acknowledged "
                     f"in {rec.now() - t_start:.2f}s; waiting for them to finish")
                t_done = await cl.drain(lambda ids: _states(by_name, ids, 2.0), rec, deadline)
                while args.cut_for > 0 and len(cuts) < args.min_cuts and rec.now() < deadline:
                    await trio.sleep(0.1)
                chaos.cancel_scope.cancel()
        if scope.cancelled_caught or t_done is None:
            timed_out, t_done = True, None
            _say(f"timeout after {args.timeout:g}s: stopping the workload and checking what there is")
        settled = await cl._settle(cluster, rec, args.heal_timeout)
        if not settled:
            rec.errors.append(f"the views did not all show every peer alive within {args.heal_timeout:g} s after "
                              f"the last heal: the cluster did not heal")
        t_end = rec.now()
        observed, listed = await cl._collect(cluster, rec, wl)
        stats = [await _stats(p) for p in peers]
    finally:
        with trio.CancelScope(shield=True):
            observer.close()
            _stop(cluster)
    verdict = checker.check(rec.submissions, observed, listed, tagged=wl.tagged)
    report = _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled, cuts, stats,
                     security, net)
    return cl.Outcome(report, report["ok"])


def _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled, cuts, stats, security,
            net) -> dict:
    base_args = argparse.Namespace(**{**vars(args), "submit_to": "all", "chaos": "partition", "plot": None})
    rep = cl._report(base_args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled)
    for key in [k for k in rep if k.startswith(("kill", "restart_", "detect_", "rejoin_"))]:
        del rep[key]
    timings = cut_timings(cuts, dict(rec.transitions), [f"p{i}" for i in range(1, args.peers + 1)])

    def med(key):
        return _r(checker.median([c[key] for c in timings if c[key] is not None]))

    def mx(key):
        vals = [c[key] for c in timings if c[key] is not None]
        return _r(max(vals)) if vals else None

    rep["ok"] = rep["ok"] and settled  # a cluster that does not heal fails the run
    rep.update({
        "cuts": len(cuts),
        "cut_log": timings,
        "majority_sees_dead_median_s": med("majority_sees_dead_all_s"),
        "minority_sees_dead_median_s": med("minority_sees_dead_all_s"),
        "majority_sees_alive_median_s": med("majority_sees_alive_all_s"),
        "majority_sees_alive_max_s": mx("majority_sees_alive_all_s"),
        "minority_sees_alive_median_s": med("minority_sees_alive_all_s"),
        "minority_sees_alive_max_s": mx("minority_sees_alive_all_s"),
        "collateral_dead": sum(len(c["collateral_dead"]) for c in timings),
        "reissued": sum(int(s.get("jobs_reissued", 0)) for s in stats),
        "results_duplicate": sum(int(s.get("jobs_results_duplicate", 0)) for s in stats),
        "peer_reexecuted": sum(int(s.get("jobs_reexecuted", 0)) for s in stats),
        "rate": args.rate, "cut_every": args.cut_every, "cut_for": args.cut_for,
        "security": security, "subnet": str(net.subnet),
    })
    return rep


def _print_report(rep: dict) -> None:
    def f(x, unit=""):
        return "-" if x is None else f"{x}{unit}"

    lines = cl.verdict_lines(rep) + [
        f"re-executed  {rep['reexecuted']} jobs ({rep['extra_attempts']} extra attempts); peers re-issued "
        f"{rep['reissued']}, ignored {rep['results_duplicate']} duplicate/late results",
        f"makespan     {f(rep['makespan_s'], ' s')} vs ideal {f(rep['ideal_s'], ' s')} = "
        f"{f(rep['makespan_over_ideal'], 'x')}; {f(rep['jobs_per_s'])} jobs/s; ack p50 {f(rep['ack_p50_ms'], ' ms')} "
        f"p99 {f(rep['ack_p99_ms'], ' ms')}",
        f"cuts         {rep['cuts']}: majority saw the cut peers dead after median {f(rep['majority_sees_dead_median_s'], ' s')}, "
        f"they saw the majority dead after {f(rep['minority_sees_dead_median_s'], ' s')}",
        f"after heal   alive again: majority's view median {f(rep['majority_sees_alive_median_s'], ' s')} "
        f"max {f(rep['majority_sees_alive_max_s'], ' s')}; cut peers' view median "
        f"{f(rep['minority_sees_alive_median_s'], ' s')} max {f(rep['minority_sees_alive_max_s'], ' s')}",
    ]
    for c in rep["cut_log"]:
        lines.append(f"  cut {','.join(c['isolated'])} at {c['t_cut']}s for {c['cut_s']}s: dead in "
                     f"majority {f(c['majority_sees_dead_all_s'])}, in minority {f(c['minority_sees_dead_all_s'])}; "
                     f"alive after heal: majority {f(c['majority_sees_alive_all_s'])}, minority "
                     f"{f(c['minority_sees_alive_all_s'])}"
                     + (f"; same-side peers declared dead: {' '.join(c['collateral_dead'])} (longest "
                        f"{c['collateral_dead_longest_s']}s)" if c["collateral_dead"] else ""))
    lines += cl.findings_lines(rep)
    print("\n".join(lines), file=sys.stderr, flush=True)


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
        if not cl.is_interrupt(exc):
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
