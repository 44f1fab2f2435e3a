"""What a run does and sees: the Record of everything that happened (as
plain data, for the checker and the report), the Workload that hands out
submission tags, the pipelined clients that submit them, and the watchers
that read every peer's PEERS view.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import trio

from executor.client import LINES
from sim import checker
from sim.chaos.procs import _CONN_ERRORS, PeerProc, _as_tuple, _open

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
    pauses: list[tuple[str, float, float]] = field(default_factory=list)  # (peer, SIGSTOP at, SIGCONT at)
    steps: list[tuple[str, float, int]] = field(default_factory=list)  # (peer, at, new wall offset s)
    probes: list[dict] = field(default_factory=list)  # WAIT probes across clock steps
    stats: dict[str, dict[str, str]] = field(default_factory=dict)  # each peer's STATS at the end
    unasked: list[str] = field(default_factory=list)  # peers that could not be asked at the end
    exited: list[str] = field(default_factory=list)  # peers that exited without being killed
    cuts: list[dict] = field(default_factory=list)  # power cuts: peers, at, what each disk dropped
    fulls: list[tuple[str, float, float]] = field(default_factory=list)  # (peer, disk full at, space back at)

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

    def __init__(self, jobs: int, job: str, *, until=None, model=None) -> None:
        """`until`: None, or a callable that is true while the clients should
        go on submitting past `jobs` (`--duration`). `model`: a
        sim/chaos/jobmodel.py `ChaosJobModel` that makes every line (tagged
        shell jobs with SUBMIT's options), or None."""
        self.jobs = jobs
        self.model = model
        self.sleep_ms = int(job) if job.strip().isdigit() and model is None else None
        self.command = job
        self.next_tag = 0
        self.retry: deque[int] = deque()
        self.busy = 0
        self.disk_full: dict[str, int] = defaultdict(int)  # SUBMITs refused with ERR disk-full, by peer
        self.until = until

    def more(self) -> bool:
        return bool(self.retry) or self.next_tag < self.jobs or self.extra()

    def extra(self) -> bool:
        """Past `jobs`, and the duration is not over yet."""
        return self.next_tag >= self.jobs and self.until is not None and self.until()

    @property
    def tagged(self) -> bool:
        return self.sleep_ms is None

    def line(self, tag: int) -> str:
        if self.model is not None:
            return self.model.line(tag)
        return f"{self.sleep_ms}" if self.sleep_ms is not None else f"SUBMIT {self.command}; echo {tag}"

    def take(self) -> int | None:
        if self.retry:
            return self.retry.popleft()
        if self.next_tag < self.jobs or self.extra():
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
    while wl.more():
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
        state = await _submit_on(conn, peer, wl, rec, in_flight, reply_timeout_s, pace)
        if state["broken"] or state["full"]:
            if rotate:
                idx = (idx + 1) % len(targets)
            await trio.sleep(0.1 if state["full"] else 0.02)
        elif wl.busy and wl.retry:
            await trio.sleep(0.05)


async def _submit_on(conn, peer: PeerProc, wl: Workload, rec: Record, in_flight: int,
                     reply_timeout_s: float | None, pace) -> dict:
    """Submit on one connection, `in_flight` outstanding, until the workload
    is done, the connection breaks or the peer's disk is full; then close it.
    Returns how it ended: {"done", "broken", "full"}."""
    pending: deque[tuple[int, float]] = deque()
    window = trio.Semaphore(in_flight)
    state = {"done": False, "broken": False, "full": False}
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            try:
                while True:
                    await window.acquire()
                    if pace is not None:
                        await pace()
                    tag = None if state["full"] else wl.take()  # a full peer: send nothing more to it
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
                    _take_reply(reply, tag, t_sent, peer, wl, rec, state)
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
    return state


def _take_reply(reply, tag: int, t_sent: float, peer: PeerProc, wl: Workload, rec: Record, state: dict) -> None:
    """One SUBMIT's reply: acknowledged, to send again (busy, disk full:
    nothing was stored), or rejected."""
    now = rec.now()
    if reply.ok:
        rec.submissions.append(checker.Submission(tag, peer.name, checker.ACKED, reply.text.strip()))
        if wl.model is not None:
            wl.model.acked(reply.text.strip(), tag)
        rec.latencies.append(now - t_sent)
        rec.last_ack = now
    elif reply.code == "busy":
        wl.busy += 1
        wl.retry.append(tag)  # nothing was stored: send it again
    elif reply.code == "disk-full":
        # Nothing was stored either: send it again, to another peer or later
        # (this connection ends once its outstanding replies are in).
        wl.disk_full[peer.name] += 1
        wl.retry.append(tag)
        state["full"] = True
    else:
        rec.submissions.append(checker.Submission(tag, peer.name, checker.REJECTED))
        rec.errors.append(f"{peer.name}: ERR {reply.code} {reply.message[:100]}")


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

