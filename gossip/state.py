"""Member state and precedence: who wins when two pieces of news about one
member meet, and every change of the member table that follows.

SWIM's precedence on (state, incarnation) is the table ``_OVERRIDES`` and
nothing else decides a member's state (rule 1, after h11).  A member never
believes itself SUSPECT or DEAD: news that it is raises its incarnation (a
refutation), which the edge persists (:class:`PersistIncarnation`) and which
is announced to a few members at most once per period.  Every message's
sender header is first-hand evidence (``_on_sender``); a message from a
previous life of a restarted peer (lower incarnation) is dropped whole.

A mixin of :class:`gossip.membership.Membership`; no I/O.  Kept apart from
suspicion timers (gossip/suspicion.py), probing, dissemination and sync so
that the precedence rules can be read on one screen.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from gossip.actions import Member, MemberChanged, PersistIncarnation
from gossip.dissemination import RANK_LOAD, RANK_STATE
from gossip.messages import (
    ALIVE,
    DEAD,
    SUSPECT,
    Announce,
    Load,
    MemberState,
    MemberUpdate,
)


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


class StateMixin:
    """The member table's transitions; fields are set up by ``Membership``."""

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
        self._enqueue(mid, RANK_LOAD)

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
        self._enqueue(mid, RANK_STATE)
        self._out.append(MemberChanged(new, None))
        return new

    def _set_state(self, m: Member, state: MemberState, inc: int, addr: str, now: float) -> None:
        assert not m.is_self, "a member never changes its own state"
        changed_at = now if state is not m.state else m.state_changed_at
        new = replace(m, state=state, incarnation=inc, addr=addr, state_changed_at=changed_at)
        self._members[m.id] = new
        self._time_suspicion(m, state, now)
        if state is DEAD:
            self._dead_since.setdefault(m.id, now)
        else:
            self._dead_since.pop(m.id, None)
            if m.state is DEAD:
                self._insert_probe_target(m.id)
        self._enqueue(m.id, RANK_STATE)
        self._out.append(MemberChanged(new, m))

    def _set_incarnation(self, inc: int) -> None:
        assert inc > self._incarnation
        self._incarnation = inc
        self._members[self.self_id] = replace(self._members[self.self_id], incarnation=inc)
        # Persist before anything that carries it: every Send after this
        # action in the list is built with the new incarnation.
        self._out.append(PersistIncarnation(inc))
        self._enqueue(self.self_id, RANK_STATE)
        self._announce_pending = True

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
        self._enqueue(self.self_id, RANK_LOAD)

    def _announce_refutation(self, now: float) -> None:
        """After a refutation, tell at most ``refute_fanout_max`` members at
        once instead of waiting for the news to be piggybacked to them; at
        most once per period, however many refutations came in between."""
        if self._announce_pending and now >= self._announce_allowed_at:
            self._announce_pending = False
            self._announce_allowed_at = now + self.config.probe_interval_s
            others = [m for m in self._members.values() if not m.is_self and m.state is not DEAD]
            if len(others) > self.config.refute_fanout_max:
                others = self._rng.sample(others, self.config.refute_fanout_max)
            for m in others:
                self._send(m.id, m.addr, lambda m=m: Announce(*self._header(), self._piggyback(m.id)))
