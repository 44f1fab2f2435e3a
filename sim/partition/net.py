"""Network namespaces for the partition harness: one per peer, a Linux bridge
in the root namespace and a veth pair per peer. A cut takes a peer's veth off
the bridge, a heal puts it back. Everything is named after the harness's pid,
so that leftovers of a dead run can be told apart and removed; entering a
namespace (for the watcher threads) is a setns(2) of the calling thread.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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

