"""Dissemination: the transmit-limited broadcast queue (memberlist's
TransmitLimitedQueue) that piggybacks news on every gossip message.

The queue is keyed by member id: a newer piece of news about a member replaces
the older one, so it never holds more than one entry per member.  An entry is
sent ``retransmit_limit(n)`` times, lowest transmit count first (state changes
before load-only news at equal counts), at most ``piggyback_updates_max`` per
message.  Entries are rendered from the current table when sent, so they are
never stale.  A member we suspect (or think dead) hears about itself first
(Lifeguard's buddy system), so that it can refute at once.

A mixin of :class:`gossip.membership.Membership`; no I/O.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from gossip.actions import Member
from gossip.messages import ALIVE, MemberUpdate

# Queue priorities at equal transmit counts: a state change goes out before
# load-only news (a death matters more than a load one period old).
RANK_STATE, RANK_LOAD = 0, 1


@dataclass(slots=True)
class _Entry:
    """A broadcast queue entry: the news is the member's current record."""

    transmits: int
    rank: int  # 0 = state change, 1 = load only
    serial: int


class DisseminationMixin:
    """The broadcast queue; fields are set up by ``Membership``."""

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
