"""Suspicion and death: the suspicion timer of a SUSPECT member, DEAD when it
expires, and forgetting the dead (retention, eviction, tombstones).

A member that misses a probe becomes SUSPECT (gossip/probing.py) and a timer
of ``suspicion_timeout_s(n)`` starts — at every member that hears the
suspicion, not just the prober.  The timer expiring makes it DEAD; news of a
newer incarnation (a refutation) stops it.  A DEAD member is kept
``dead_member_retain_s`` while the news spreads, then forgotten (or evicted
first when the table is full); its last incarnation stays as a tombstone (at
most ``members_max``) so that a stale message from that life cannot bring it
back.

A mixin of :class:`gossip.membership.Membership`; no I/O.  Apart from the
precedence rules (gossip/state.py), which decide *whether* a state changes;
this module holds the timers that make it change on their own.
"""

from __future__ import annotations

from gossip.actions import Member, MemberForgotten
from gossip.messages import DEAD, SUSPECT, MemberState


class SuspicionMixin:
    """Suspicion timers and the end of the dead; fields are set up by ``Membership``."""

    def _time_suspicion(self, old: Member, state: MemberState, now: float) -> None:
        """Start the timer when a member becomes SUSPECT (not again while it
        stays so: hearing the suspicion twice must not postpone death), stop
        it on any other state.  Sized on the members not DEAD."""
        if state is SUSPECT:
            if old.state is not SUSPECT:
                self._suspect_deadline[old.id] = now + self.config.suspicion_timeout_s(self._n())
        else:
            self._suspect_deadline.pop(old.id, None)

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
