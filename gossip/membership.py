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

The protocol is SWIM as memberlist implements it, with Lifeguard's additions,
and the code is split the way memberlist splits it, one concern per module;
:class:`Membership` is composed of their mixins and owns every field (set up
in ``__init__`` below, grouped by the concern that uses it):

=========================  ================================================
gossip/messages.py         the gossip messages and member states on the wire
gossip/actions.py          the member record and the actions handed out
gossip/state.py            precedence on (state, incarnation), the table's
                           transitions, refutation, our own load
gossip/suspicion.py        suspicion timers, death, forgetting the dead
gossip/probing.py          direct and indirect probes, relays for others
gossip/dissemination.py    the transmit-limited broadcast queue (piggyback)
gossip/sync.py             join, rejoin, push/pull anti-entropy
=========================  ================================================

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

This module also re-exports the public names of the concern modules, so that
``from gossip.membership import ...`` works as it always did.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from gossip import actions, messages
from gossip.actions import Action, Member, MemberChanged, MemberForgotten, PersistIncarnation, Send
from gossip.config import GossipConfig
from gossip.dissemination import DisseminationMixin, _Entry
from gossip.messages import (ALIVE, DEAD, GOSSIP_MESSAGES, SUSPECT, Ack, Announce, IndirectAck, Load, MemberState,
                             MemberUpdate, Ping, PingReq, Sync)
from gossip.probing import ProbingMixin, _Probe, _Relay
from gossip.state import StateMixin
from gossip.suspicion import SuspicionMixin
from gossip.sync import SyncMixin

if TYPE_CHECKING:  # only the type: randomness always comes from the caller's Random
    import random

# The public names of the messages and actions are re-exported: the edges, the
# simulation and the tests import them from here.
__all__ = [*messages.__all__, *actions.__all__, "Membership"]


class Membership(StateMixin, SuspicionMixin, ProbingMixin, DisseminationMixin, SyncMixin):
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
        self._start_join(seed_addrs, known, now)
        return self._end(now)

    def tick(self, now: float) -> list[Action]:
        """Run every timer that is due.  Call every 20–50 ms."""
        self._begin(now)
        self._run_probes(now)
        self._expire_relays(now)
        self._expire_suspicions(now)
        self._forget_dead(now)
        self._publish_load(now)
        self._probe_period(now)
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
            self._on_ping(msg)
        elif isinstance(msg, Ack):
            self._on_ack(msg)
        elif isinstance(msg, PingReq):
            self._on_ping_req(msg, now)
        elif isinstance(msg, IndirectAck):
            self._on_indirect_ack(msg, now)
        elif isinstance(msg, Sync):
            self._on_sync(msg)
        return self._end(now)

    def connection_lost(self, peer_id: str, now: float) -> list[Action]:
        """The link to ``peer_id`` broke or could not be opened.  Only a hint:
        the member is probed now (at most one such out-of-turn probe at a
        time) instead of waiting for its turn; it is never marked on this."""
        self._begin(now)
        self._hint_unreachable(peer_id, now)
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
        self._announce_refutation(now)
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
