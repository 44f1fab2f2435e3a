"""SWIM membership and load dissemination: a sans-IO core.

Theory of operation
-------------------
One :class:`Membership` object per peer holds the member table (id, address,
incarnation, state, load) and is driven by four inputs — :meth:`join`,
:meth:`tick`, :meth:`receive`, :meth:`connection_lost` — each taking ``now``
(seconds, any monotonic origin) and returning a list of actions for the edge:
:class:`Send` a message, :class:`PersistIncarnation`, :class:`MemberChanged`,
:class:`MemberForgotten`.  It does no I/O, reads no clock and draws random
numbers only from the ``random.Random`` it is given, so the same code runs
under trio, in sim/'s event heap and under hypothesis.

Failure detection is SWIM as memberlist implements it.  Each protocol period
(``probe_interval_s``) we Ping the next member of a shuffled round-robin list
(reshuffled every round; a new member is inserted at a random place in the
rest of the round).  No Ack within ``probe_timeout_s`` → PingReq to
``indirect_probes`` random others, who Ping the target and relay an
IndirectAck.  No Ack of any kind by the end of the period → the target becomes
SUSPECT and a suspicion timer of ``suspicion_timeout_s(n)`` starts — at every
member that hears the suspicion, not just ours.  The timer expiring makes it
DEAD.  A member that hears itself suspected or declared dead refutes by
raising its incarnation (the edge persists it: see :class:`PersistIncarnation`).

Who wins when two pieces of news about one member meet is decided only by
``_OVERRIDES`` below (SWIM's precedence on (state, incarnation)).  A member
never believes itself SUSPECT or DEAD.

Every message carries its sender's (id, address, incarnation, load): that is
direct, first-hand evidence that the sender is ALIVE at that incarnation, and
keeps the sender's load at most one message old at its partners.  A message
whose sender incarnation is *lower* than the one we know comes from a previous
life of a restarted peer and is dropped whole.

News travels piggybacked on Ping/Ack/PingReq/IndirectAck from a broadcast queue
keyed by member id: a newer piece of news about a member replaces the older
one, so the queue never holds more than one entry per member.  An entry is sent
``retransmit_limit(n)`` times, lowest transmit count first (state changes before
load-only news at equal counts), at most ``piggyback_updates_max`` per message.
Entries are rendered from the current table when sent, so they are never stale.

Load: the owner calls :meth:`set_local_load`; at most one new load version per
probe period is published (as a queue entry about ourselves plus the header of
every message we send).  Receivers keep the load with the newest version for a
member's current incarnation.

Messages per member per period are O(1) whatever n: one Ping (plus at most one
out-of-turn probe after a ``connection_lost`` hint), the Acks for the Pings we
get (one on average), k PingReqs only when a probe misses.  The O(n) Sync goes
out only on join, every ``push_pull_interval_s`` to one member, and while we
are alone.  A refutation fans an Announce out to at most ``refute_fanout_max``
members, at most once per period.

Pauses: if two inputs are more than ``pause_detect_gap_s`` apart we were
stopped (SIGSTOP, GC, starvation).  We shift our own timers by the gap (our
silence must not condemn others) and refute pre-emptively with incarnation + 1,
so the Acks we owe for the Pings that queued up while we were stopped already
clear us at whoever suspected us.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from gossip.config import GossipConfig
from gossip.wire import message

if TYPE_CHECKING:  # only the type: randomness always comes from the caller's Random
    import random

__all__ = [
    "MemberState",
    "Load",
    "Member",
    "MemberUpdate",
    "Ping",
    "Ack",
    "PingReq",
    "IndirectAck",
    "Announce",
    "Sync",
    "GOSSIP_MESSAGES",
    "Send",
    "MemberChanged",
    "MemberForgotten",
    "PersistIncarnation",
    "Action",
    "Membership",
]


class MemberState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


# --------------------------------------------------------------------------
# Wire messages
# --------------------------------------------------------------------------


@message("load")
@dataclass(frozen=True, slots=True)
class Load:
    """A peer's load as it published it.  ``version`` grows with every
    publication within one incarnation of the peer; compare loads only for the
    same incarnation (the core does)."""

    queued: int
    running: int
    slots: int
    version: int


@message("mu")
@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """One member's record as the sender knows it.  ``load`` is None when the
    sender has no load for this member's current incarnation."""

    id: str
    addr: str
    incarnation: int
    state: MemberState
    load: Load | None


# Every gossip message starts with the sender's header:
# from_id, from_addr, from_incarnation, from_load.


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    target_id: str  # whom the sender thinks it is pinging; a mismatch gets no Ack
    updates: tuple[MemberUpdate, ...]


@message("ack")
@dataclass(frozen=True, slots=True)
class Ack:
    seq: int  # the seq of the Ping being answered
    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    updates: tuple[MemberUpdate, ...]


@message("pingreq")
@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int  # the requester's probe seq, echoed in the IndirectAck
    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    target_id: str
    target_addr: str
    updates: tuple[MemberUpdate, ...]


@message("iack")
@dataclass(frozen=True, slots=True)
class IndirectAck:
    seq: int  # the requester's probe seq
    from_id: str  # the helper
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    target_id: str
    target_incarnation: int  # as the target stated it in its Ack to the helper
    updates: tuple[MemberUpdate, ...]


@message("announce")
@dataclass(frozen=True, slots=True)
class Announce:
    """Unsolicited 'I am alive at this incarnation' (sent after a refutation)."""

    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    updates: tuple[MemberUpdate, ...]


@message("sync")
@dataclass(frozen=True, slots=True)
class Sync:
    """Full state exchange (memberlist's push/pull).  ``reply`` asks the
    receiver to answer with its own full state."""

    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    members: tuple[MemberUpdate, ...]
    reply: bool


GOSSIP_MESSAGES: tuple[type, ...] = (Ping, Ack, PingReq, IndirectAck, Announce, Sync)


# --------------------------------------------------------------------------
# Table records and actions
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    addr: str
    incarnation: int
    state: MemberState
    load: Load | None  # None until we have heard one for this peer
    state_changed_at: float
    is_self: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    """Open (or reuse) a link to ``to_addr`` and write ``frame(encode(msg))``.
    ``to_id`` is None when we do not know who listens there (a seed).  Losing
    it is fine (gossip tolerates loss); report a failed link with
    :meth:`Membership.connection_lost`."""

    to_id: str | None
    to_addr: str
    msg: Any


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A member appeared, or its state, incarnation or address changed.
    (Load changes are not reported: read ``member.load`` when you need it.)"""

    member: Member
    previous: Member | None


@dataclass(frozen=True, slots=True)
class MemberForgotten:
    """A dead member was dropped from the table (retention over, or evicted)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class PersistIncarnation:
    """Our own incarnation changed.  Store it durably before carrying out any
    later action of the same list (they may carry it)."""

    incarnation: int


Action = Send | MemberChanged | MemberForgotten | PersistIncarnation


# --------------------------------------------------------------------------
# The transition table (SWIM precedence)
# --------------------------------------------------------------------------


def _gt(new: int, cur: int) -> bool:
    return new > cur


def _ge(new: int, cur: int) -> bool:
    return new >= cur


def _never(new: int, cur: int) -> bool:
    return False


# (news state, current state) -> does news at incarnation `new` replace the
# current record at incarnation `cur`?  Rule 1 (after h11): every decision on a
# member's state goes through this table.
_OVERRIDES: dict[tuple[MemberState, MemberState], Callable[[int, int], bool]] = {
    (ALIVE, ALIVE): _gt,  # a newer incarnation (refutation or restart)
    (ALIVE, SUSPECT): _gt,  # refutation
    (ALIVE, DEAD): _gt,  # a restarted (or wrongly declared) peer comes back
    (SUSPECT, ALIVE): _ge,
    (SUSPECT, SUSPECT): _gt,
    (SUSPECT, DEAD): _never,  # death is only undone by a newer ALIVE
    (DEAD, ALIVE): _ge,
    (DEAD, SUSPECT): _ge,
    (DEAD, DEAD): _gt,  # keeps DEAD, records the newer incarnation
}


# --------------------------------------------------------------------------
# The core
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Probe:
    seq: int
    target_id: str
    target_addr: str
    indirect_at: float
    deadline: float
    urgent: bool
    indirect_sent: bool = False


@dataclass(slots=True)
class _Relay:
    requester_id: str
    requester_addr: str
    requester_seq: int
    target_id: str
    deadline: float


@dataclass(slots=True)
class _Entry:
    """A broadcast queue entry: the news is the member's current record."""

    transmits: int
    rank: int  # 0 = state change, 1 = load only
    serial: int


_RANK_STATE, _RANK_LOAD = 0, 1


class Membership:
    """The SWIM core of one peer.  See the module docstring."""

    def __init__(
        self,
        self_id: str,
        self_addr: str,
        incarnation: int,
        config: GossipConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        self.self_id = self_id
        self.self_addr = self_addr
        self.config = config
        self._rng = rng
        self._incarnation = incarnation
        self._load: Load | None = None
        self._load_pending: tuple[int, int, int] | None = None
        self._load_published_at = float("-inf")

        self._members: dict[str, Member] = {
            self_id: Member(self_id, self_addr, incarnation, ALIVE, None, now, is_self=True)
        }
        # Incarnation at which each member's load was stamped.
        self._load_incarnation: dict[str, int] = {}
        self._suspect_deadline: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}
        # Forgotten members: id -> last incarnation (bounded by members_max).
        self._tombstones: dict[str, int] = {}
        self._told_dead_at: dict[str, float] = {}  # forgotten id -> when we last told it so

        self._bcast: dict[str, _Entry] = {}
        # The same entries ordered by (transmits, rank, serial): picking the
        # least-sent news is O(log n) per item, not a scan of the queue.
        # Stale heap items (the entry changed or left) are skipped when popped.
        self._bheap: list[tuple[int, int, int, str]] = []
        self._serial = 0

        self._probe_order: list[str] = []
        self._probe_pos = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._urgent: list[str] = []
        self._seq = 0

        # Desynchronise peers that start together: first probe somewhere in the
        # first period, first push/pull somewhere in the first interval.
        self._next_probe_at = now + rng.uniform(0, config.probe_interval_s)
        self._next_push_pull_at = now + rng.uniform(0.5, 1.0) * config.push_pull_interval_s
        self._next_rejoin_at = float("inf")
        self._join_targets: list[tuple[str | None, str]] = []

        self._announce_pending = False
        self._announce_allowed_at = float("-inf")
        self._last_now = now
        self._out: list[Action] = []
        self._stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ inputs

    def join(self, seed_addrs: list[str], known: list[tuple[str, str]], now: float) -> list[Action]:
        """Send a Sync (push/pull, reply requested) to every seed and to at most
        ``join_known_max`` remembered (peer_id, addr) pairs, and queue our own
        ALIVE announcement.  Retried every ``rejoin_interval_s`` while we see
        no live peer."""
        self._begin(now)
        targets: dict[str, str | None] = {}
        for addr in seed_addrs[: self.config.join_known_max]:
            if addr != self.self_addr:
                targets.setdefault(addr, None)
        others = [(pid, addr) for pid, addr in known if pid != self.self_id and addr != self.self_addr]
        if len(others) > self.config.join_known_max:
            others = self._rng.sample(others, self.config.join_known_max)
        for pid, addr in others:
            targets[addr] = pid
        self._join_targets = [(pid, addr) for addr, pid in targets.items()]
        self._send_join_syncs()
        self._next_rejoin_at = now + self.config.rejoin_interval_s
        self._enqueue(self.self_id, _RANK_STATE)
        return self._end(now)

    def tick(self, now: float) -> list[Action]:
        """Run every timer that is due.  Call every 20–50 ms."""
        self._begin(now)
        self._run_probes(now)
        self._expire_relays(now)
        self._expire_suspicions(now)
        self._forget_dead(now)
        self._publish_load(now)
        if now >= self._next_probe_at:
            self._next_probe_at += self.config.probe_interval_s
            if self._next_probe_at <= now:
                self._next_probe_at = now + self.config.probe_interval_s
            # A regular probe is judged when its period ends, even if tick
            # lateness left a few milliseconds of its deadline.
            for p in self._probes.values():
                if not p.urgent:
                    p.deadline = min(p.deadline, now)
            self._run_probes(now)
            target = self._next_target()
            if target is not None:
                self._start_probe(target, now, urgent=False)
        self._start_urgent_probe(now)
        self._push_pull(now)
        self._rejoin(now)
        return self._end(now)

    def receive(self, from_id: str | None, msg: Any, now: float) -> list[Action]:
        """A decoded gossip message arrived.  ``from_id`` is the peer id the
        link announced in its hello (None if unknown); a message claiming to
        come from someone else is dropped."""
        self._begin(now)
        if not isinstance(msg, GOSSIP_MESSAGES):
            raise TypeError(f"not a gossip message: {type(msg).__qualname__}")
        self._stats[f"received_{type(msg).__name__}"] += 1
        if from_id is not None and from_id != msg.from_id:
            self._stats["dropped_link_mismatch"] += 1
            return self._end(now)
        updates = msg.members if isinstance(msg, Sync) else msg.updates
        if not self._on_sender(msg, now):
            # Whoever it is from, news that *we* are dead is worth refuting:
            # after a long partition both sides have buried each other, and
            # this is how the first of them comes back.
            for update in updates[: self.config.members_max]:
                if update.id == self.self_id:
                    self._apply(update, now)
            return self._end(now)
        if len(updates) > self.config.members_max:
            self._stats["dropped_oversize"] += 1
            return self._end(now)
        for update in updates:
            self._apply(update, now)

        if isinstance(msg, Ping):
            if msg.target_id != self.self_id:
                # The address now belongs to someone else (e.g. a new peer id
                # on a reused port): no Ack, so the prober suspects the old id.
                self._stats["dropped_misdirected_ping"] += 1
            else:
                self._send(msg.from_id, msg.from_addr, lambda: Ack(msg.seq, *self._header(), self._piggyback(msg.from_id)))
        elif isinstance(msg, Ack):
            self._on_ack(msg)
        elif isinstance(msg, PingReq):
            self._on_ping_req(msg, now)
        elif isinstance(msg, IndirectAck):
            probe = self._probes.get(msg.seq)
            if probe is not None and probe.target_id == msg.target_id:
                del self._probes[msg.seq]
                self._stats["probes_acked_indirect"] += 1
                self._apply(MemberUpdate(msg.target_id, probe.target_addr, msg.target_incarnation, ALIVE, None), now)
        elif isinstance(msg, Sync):
            if msg.reply:
                self._send(msg.from_id, msg.from_addr, lambda: Sync(*self._header(), self._full_state(), False))
        return self._end(now)

    def connection_lost(self, peer_id: str, now: float) -> list[Action]:
        """The link to ``peer_id`` broke or could not be opened.  Only a hint:
        the member is probed now (at most one such out-of-turn probe at a
        time) instead of waiting for its turn; it is never marked on this."""
        self._begin(now)
        m = self._members.get(peer_id)
        if m is not None and not m.is_self and m.state is not DEAD:
            busy = any(p.target_id == peer_id for p in self._probes.values())
            if not busy and peer_id not in self._urgent:
                self._urgent.append(peer_id)
            self._start_urgent_probe(now)
        return self._end(now)

    def set_local_load(self, queued: int, running: int, slots: int) -> None:
        """Our own load.  Published on the next tick, at most one new version
        per probe period (later calls within a period just overwrite)."""
        self._load_pending = (queued, running, slots)

    # ----------------------------------------------------------------- queries

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def members(self) -> list[Member]:
        """Every member in the table, self included (``is_self``), DEAD ones
        until they are forgotten."""
        return list(self._members.values())

    def alive_peers(self) -> list[Member]:
        """Other members that are ALIVE.  SUSPECT members are left out: they
        may be gone, so do not send them work; but do not give up on work they
        hold until they are DEAD."""
        return [m for m in self._members.values() if m.state is ALIVE and not m.is_self]

    def member(self, peer_id: str) -> Member | None:
        return self._members.get(peer_id)

    def is_alive(self, peer_id: str) -> bool:
        m = self._members.get(peer_id)
        return m is not None and m.state is ALIVE

    def statistics(self) -> dict[str, int]:
        """Counters: messages sent/received by type, drops by reason, refusals."""
        return dict(self._stats)

    def validate_state(self) -> None:
        """Check internal invariants (tests and simulation call this)."""
        me = self._members[self.self_id]
        assert me.is_self and me.state is ALIVE and me.incarnation == self._incarnation
        assert len(self._members) <= self.config.members_max
        assert set(self._suspect_deadline) == {i for i, m in self._members.items() if m.state is SUSPECT}
        assert set(self._dead_since) == {i for i, m in self._members.items() if m.state is DEAD}
        assert set(self._bcast) <= set(self._members)
        assert len(self._tombstones) <= self.config.members_max
        assert sum(1 for p in self._probes.values() if p.urgent) <= 1
        assert sum(1 for p in self._probes.values() if not p.urgent) <= 1

    # --------------------------------------------------------- input plumbing

    def _begin(self, now: float) -> None:
        assert not self._out, "actions left over from a previous input"
        gap = now - self._last_now
        if gap > self.config.pause_detect_gap_s:
            self._stats["pauses_detected"] += 1
            self._shift_timers(gap)
            # Others may have suspected us while we were stopped: refute now,
            # so every Ack we owe carries the new incarnation.
            self._set_incarnation(self._incarnation + 1)
        if now > self._last_now:
            self._last_now = now

    def _end(self, now: float) -> list[Action]:
        if self._announce_pending and now >= self._announce_allowed_at:
            self._announce_pending = False
            self._announce_allowed_at = now + self.config.probe_interval_s
            others = [m for m in self._members.values() if not m.is_self and m.state is not DEAD]
            if len(others) > self.config.refute_fanout_max:
                others = self._rng.sample(others, self.config.refute_fanout_max)
            for m in others:
                self._send(m.id, m.addr, lambda m=m: Announce(*self._header(), self._piggyback(m.id)))
        out, self._out = self._out, []
        return out

    def _shift_timers(self, gap: float) -> None:
        for p in self._probes.values():
            p.indirect_at += gap
            p.deadline += gap
        for r in self._relays.values():
            r.deadline += gap
        for mid in self._suspect_deadline:
            self._suspect_deadline[mid] += gap
        self._next_probe_at += gap
        self._next_push_pull_at += gap
        self._next_rejoin_at += gap

    def _send(self, to_id: str | None, to_addr: str, build: Callable[[], Any]) -> None:
        # Messages are built lazily, at the moment of sending, so that they
        # carry our incarnation as it is after everything before them.
        msg = build()
        self._stats[f"sent_{type(msg).__name__}"] += 1
        self._out.append(Send(to_id, to_addr, msg))

    def _header(self) -> tuple[str, str, int, Load | None]:
        return (self.self_id, self.self_addr, self._incarnation, self._load)

    def _n(self) -> int:
        return len(self._members) - len(self._dead_since)

    # --------------------------------------------------------------- probing

    def _next_target(self) -> Member | None:
        for _ in range(len(self._probe_order) + 2):
            if self._probe_pos >= len(self._probe_order):
                self._probe_order = [i for i, m in self._members.items() if not m.is_self and m.state is not DEAD]
                self._rng.shuffle(self._probe_order)
                self._probe_pos = 0
                if not self._probe_order:
                    return None
            mid = self._probe_order[self._probe_pos]
            self._probe_pos += 1
            m = self._members.get(mid)
            if m is not None and m.state is not DEAD:
                return m
        return None

    def _start_probe(self, target: Member, now: float, urgent: bool) -> None:
        if any(p.target_id == target.id for p in self._probes.values()):
            return
        self._seq += 1
        seq = self._seq
        cfg = self.config
        self._probes[seq] = _Probe(seq, target.id, target.addr, now + cfg.probe_timeout_s, now + cfg.probe_interval_s, urgent)
        self._send(target.id, target.addr, lambda: Ping(seq, *self._header(), target.id, self._piggyback(target.id)))

    def _start_urgent_probe(self, now: float) -> None:
        if any(p.urgent for p in self._probes.values()):
            return
        while self._urgent:
            m = self._members.get(self._urgent.pop(0))
            if m is not None and m.state is not DEAD:
                self._stats["probes_urgent"] += 1
                self._start_probe(m, now, urgent=True)
                return

    def _run_probes(self, now: float) -> None:
        for seq, p in list(self._probes.items()):
            target = self._members.get(p.target_id)
            if target is None or target.state is DEAD:
                del self._probes[seq]
            elif now >= p.deadline:
                del self._probes[seq]
                self._stats["probes_failed"] += 1
                if target.state is ALIVE:
                    self._set_state(target, SUSPECT, target.incarnation, target.addr, now)
            elif not p.indirect_sent and now >= p.indirect_at:
                p.indirect_sent = True
                helpers = [m for m in self._members.values() if m.state is ALIVE and not m.is_self and m.id != p.target_id]
                if len(helpers) > self.config.indirect_probes:
                    helpers = self._rng.sample(helpers, self.config.indirect_probes)
                for h in helpers:
                    self._send(
                        h.id,
                        h.addr,
                        lambda h=h, p=p: PingReq(p.seq, *self._header(), p.target_id, p.target_addr, self._piggyback(h.id)),
                    )

    def _on_ack(self, msg: Ack) -> None:
        probe = self._probes.get(msg.seq)
        if probe is not None and probe.target_id == msg.from_id:
            del self._probes[msg.seq]
            self._stats["probes_acked"] += 1
            return
        relay = self._relays.get(msg.seq)
        if relay is not None and relay.target_id == msg.from_id:
            del self._relays[msg.seq]
            self._send(
                relay.requester_id,
                relay.requester_addr,
                lambda: IndirectAck(
                    relay.requester_seq, *self._header(), msg.from_id, msg.from_incarnation, self._piggyback(relay.requester_id)
                ),
            )

    def _on_ping_req(self, msg: PingReq, now: float) -> None:
        if msg.target_id == self.self_id:
            return
        if len(self._relays) >= self.config.members_max:
            # Overflow policy: drop and count (the requester falls back on its
            # other helpers).
            self._stats["dropped_relay_full"] += 1
            return
        self._seq += 1
        seq = self._seq
        self._relays[seq] = _Relay(msg.from_id, msg.from_addr, msg.seq, msg.target_id, now + self.config.probe_interval_s)
        self._send(msg.target_id, msg.target_addr, lambda: Ping(seq, *self._header(), msg.target_id, self._piggyback(msg.target_id)))

    def _expire_relays(self, now: float) -> None:
        for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
            del self._relays[seq]

    # ------------------------------------------------------- state and news

    def _on_sender(self, msg: Any, now: float) -> bool:
        """Account for the sender's header; False = drop the whole message."""
        sid, inc = msg.from_id, msg.from_incarnation
        if sid == self.self_id:
            self._stats["dropped_from_self"] += 1
            return False
        m = self._members.get(sid)
        if m is None:
            tomb = self._tombstones.get(sid)
            if tomb is not None and inc <= tomb:
                self._stats["dropped_stale_incarnation"] += 1
                self._tell_it_is_dead(sid, msg.from_addr, tomb, now)
                return False
            self._add(sid, msg.from_addr, inc, now)
        elif inc < m.incarnation:
            # A message from a previous life of a restarted peer.
            self._stats["dropped_stale_incarnation"] += 1
            return False
        elif inc > m.incarnation:
            self._set_state(m, ALIVE, inc, msg.from_addr, now)
        self._merge_load(sid, inc, msg.from_load)
        return True

    def _tell_it_is_dead(self, sid: str, addr: str, tomb: int, now: float) -> None:
        """A forgotten member speaks at an incarnation we buried. Either it is
        a stale message from a previous life (the new life ignores the news),
        or the member was cut off so long that both sides forgot each other:
        it does not know it was declared dead and would never raise its
        incarnation, so nothing it says would be heard again. Tell it, at most
        once per probe period; it refutes, and its next message is news."""
        if now - self._told_dead_at.get(sid, float("-inf")) < self.config.probe_interval_s:
            return
        if len(self._told_dead_at) >= self.config.members_max:
            self._told_dead_at.clear()
        self._told_dead_at[sid] = now
        self._stats["told_forgotten_member_it_is_dead"] += 1
        self._send(sid, addr, lambda: Announce(*self._header(), (MemberUpdate(sid, addr, tomb, DEAD, None),)))

    def _apply(self, u: MemberUpdate, now: float) -> None:
        if u.id == self.self_id:
            # Never believe we are suspect or dead; never let a rumour of a
            # newer incarnation of us stand.
            if (u.state is ALIVE and u.incarnation > self._incarnation) or (
                u.state is not ALIVE and u.incarnation >= self._incarnation
            ):
                self._stats["refutations"] += 1
                self._set_incarnation(u.incarnation + 1)
            return
        m = self._members.get(u.id)
        if m is None:
            # Suspicion or death of a member we do not know is not news to us
            # (memberlist does the same).
            if u.state is not ALIVE:
                return
            tomb = self._tombstones.get(u.id)
            if tomb is not None and u.incarnation <= tomb:
                return
            self._add(u.id, u.addr, u.incarnation, now)
        elif _OVERRIDES[(u.state, m.state)](u.incarnation, m.incarnation):
            self._set_state(m, u.state, u.incarnation, u.addr if u.state is ALIVE else m.addr, now)
        self._merge_load(u.id, u.incarnation, u.load)

    def _merge_load(self, mid: str, inc: int, load: Load | None) -> None:
        m = self._members.get(mid)
        if load is None or m is None or m.is_self or inc != m.incarnation:
            return
        if self._load_incarnation.get(mid) == inc and m.load is not None and load.version <= m.load.version:
            return
        self._load_incarnation[mid] = inc
        self._members[mid] = replace(m, load=load)
        self._enqueue(mid, _RANK_LOAD)

    def _add(self, mid: str, addr: str, inc: int, now: float) -> Member | None:
        if len(self._members) >= self.config.members_max:
            if not self._dead_since:
                self._stats["members_refused"] += 1
                return None
            oldest = min(self._dead_since, key=self._dead_since.__getitem__)
            self._stats["members_evicted"] += 1
            self._forget(oldest)
        new = Member(mid, addr, inc, ALIVE, None, now)
        self._members[mid] = new
        self._tombstones.pop(mid, None)
        self._insert_probe_target(mid)
        self._enqueue(mid, _RANK_STATE)
        self._out.append(MemberChanged(new, None))
        return new

    def _set_state(self, m: Member, state: MemberState, inc: int, addr: str, now: float) -> None:
        assert not m.is_self, "a member never changes its own state"
        changed_at = now if state is not m.state else m.state_changed_at
        new = replace(m, state=state, incarnation=inc, addr=addr, state_changed_at=changed_at)
        self._members[m.id] = new
        if state is SUSPECT:
            if m.state is not SUSPECT:
                self._suspect_deadline[m.id] = now + self.config.suspicion_timeout_s(self._n())
        else:
            self._suspect_deadline.pop(m.id, None)
        if state is DEAD:
            self._dead_since.setdefault(m.id, now)
        else:
            self._dead_since.pop(m.id, None)
            if m.state is DEAD:
                self._insert_probe_target(m.id)
        self._enqueue(m.id, _RANK_STATE)
        self._out.append(MemberChanged(new, m))

    def _set_incarnation(self, inc: int) -> None:
        assert inc > self._incarnation
        self._incarnation = inc
        self._members[self.self_id] = replace(self._members[self.self_id], incarnation=inc)
        # Persist before anything that carries it: every Send after this
        # action in the list is built with the new incarnation.
        self._out.append(PersistIncarnation(inc))
        self._enqueue(self.self_id, _RANK_STATE)
        self._announce_pending = True

    def _insert_probe_target(self, mid: str) -> None:
        # Into the rest of the current round, at a random place (memberlist).
        if mid in self._probe_order[self._probe_pos :]:
            return
        self._probe_order.insert(self._rng.randint(self._probe_pos, len(self._probe_order)), mid)

    def _expire_suspicions(self, now: float) -> None:
        for mid in [i for i, t in self._suspect_deadline.items() if now >= t]:
            m = self._members[mid]
            self._stats["declared_dead"] += 1
            self._set_state(m, DEAD, m.incarnation, m.addr, now)

    def _forget_dead(self, now: float) -> None:
        retain = self.config.dead_member_retain_s
        for mid in [i for i, t in self._dead_since.items() if now - t >= retain]:
            self._forget(mid)

    def _forget(self, mid: str) -> None:
        m = self._members.pop(mid)
        self._dead_since.pop(mid, None)
        self._suspect_deadline.pop(mid, None)
        self._load_incarnation.pop(mid, None)
        self._bcast.pop(mid, None)
        if mid in self._urgent:
            self._urgent.remove(mid)
        self._tombstones.pop(mid, None)
        self._tombstones[mid] = m.incarnation
        if len(self._tombstones) > self.config.members_max:
            del self._tombstones[next(iter(self._tombstones))]
        self._out.append(MemberForgotten(mid))

    def _publish_load(self, now: float) -> None:
        pending = self._load_pending
        if pending is None or now < self._load_published_at + self.config.probe_interval_s:
            return
        cur = self._load
        if cur is not None and (cur.queued, cur.running, cur.slots) == pending:
            return
        version = 1 if cur is None else cur.version + 1
        self._load = Load(*pending, version)
        self._load_published_at = now
        self._members[self.self_id] = replace(self._members[self.self_id], load=self._load)
        self._enqueue(self.self_id, _RANK_LOAD)

    # ----------------------------------------------------- broadcast queue

    def _enqueue(self, mid: str, rank: int) -> None:
        self._serial += 1
        old = self._bcast.get(mid)
        if old is not None and old.rank < rank:
            rank = old.rank  # a pending state change keeps its priority
        self._bcast[mid] = _Entry(0, rank, self._serial)
        heapq.heappush(self._bheap, (0, rank, self._serial, mid))
        if len(self._bheap) > 4 * len(self._bcast) + 64:
            self._bheap = [(e.transmits, e.rank, e.serial, m) for m, e in self._bcast.items()]
            heapq.heapify(self._bheap)

    def _update_of(self, m: Member) -> MemberUpdate:
        if m.is_self:
            load = self._load
        else:
            load = m.load if self._load_incarnation.get(m.id) == m.incarnation else None
        return MemberUpdate(m.id, m.addr, m.incarnation, m.state, load)

    def _piggyback(self, to_id: str | None) -> tuple[MemberUpdate, ...]:
        out: list[MemberUpdate] = []
        if to_id is not None:
            dest = self._members.get(to_id)
            # Buddy system (Lifeguard): tell a member we suspect (or think
            # dead) about it first, so that it can refute at once.
            if dest is not None and dest.state is not ALIVE:
                out.append(self._update_of(dest))
        room = self.config.piggyback_updates_max - len(out)
        if room <= 0 or not self._bcast:
            return tuple(out)
        limit = self.config.retransmit_limit(self._n())
        heap, bcast = self._bheap, self._bcast
        picked: list[str] = []
        kept_back = None
        while heap and len(picked) < room:
            item = heapq.heappop(heap)
            transmits, _, serial, mid = item
            entry = bcast.get(mid)
            if entry is None or entry.serial != serial or entry.transmits != transmits:
                continue  # stale: that news changed or was dropped since
            if mid == to_id:
                kept_back = item  # not news to the receiver itself
                continue
            picked.append(mid)
        if kept_back is not None:
            heapq.heappush(heap, kept_back)
        for mid in picked:
            out.append(self._update_of(self._members[mid]))
            entry = bcast[mid]
            entry.transmits += 1
            if entry.transmits >= limit:
                del bcast[mid]
            else:
                heapq.heappush(heap, (entry.transmits, entry.rank, entry.serial, mid))
        return tuple(out)

    def _full_state(self) -> tuple[MemberUpdate, ...]:
        return tuple(self._update_of(m) for m in self._members.values())

    # ------------------------------------------------ anti-entropy, joining

    def _push_pull(self, now: float) -> None:
        if now < self._next_push_pull_at:
            return
        self._next_push_pull_at = now + self.config.push_pull_interval_s
        live = [m for m in self._members.values() if not m.is_self and m.state is not DEAD]
        dead = [m for m in self._members.values() if m.state is DEAD]
        # Sometimes a dead one: if it is alive behind a healed partition, the
        # exchange tells it it was declared dead and it refutes.
        pool = dead if dead and (not live or self._rng.random() < 0.5) else live
        if pool:
            m = self._rng.choice(pool)
            self._stats["push_pulls"] += 1
            self._send(m.id, m.addr, lambda: Sync(*self._header(), self._full_state(), True))

    def _rejoin(self, now: float) -> None:
        if now < self._next_rejoin_at:
            return
        self._next_rejoin_at = now + self.config.rejoin_interval_s
        if any(not m.is_self and m.state is not DEAD for m in self._members.values()):
            return
        self._stats["rejoins"] += 1
        self._send_join_syncs()

    def _send_join_syncs(self) -> None:
        for pid, addr in self._join_targets:
            self._send(pid, addr, lambda: Sync(*self._header(), self._full_state(), True))
