"""Probing: SWIM's failure detector, direct and indirect, as memberlist does it.

Each protocol period (``probe_interval_s``) we Ping the next member of a
shuffled round-robin list (reshuffled every round; a new member is inserted at
a random place in the rest of the round).  No Ack within ``probe_timeout_s`` →
PingReq to ``indirect_probes`` random others, who Ping the target and relay an
IndirectAck (the relays, ``_Relay``, are ours to keep for others).  No Ack of
any kind by the end of the period → the target becomes SUSPECT
(gossip/suspicion.py times it from there).  A broken link is a hint, never a
verdict: the member is probed at once, out of turn (at most one such urgent
probe at a time).

A mixin of :class:`gossip.membership.Membership`; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.actions import Member
from gossip.messages import (
    ALIVE,
    DEAD,
    SUSPECT,
    Ack,
    IndirectAck,
    MemberUpdate,
    Ping,
    PingReq,
)


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


class ProbingMixin:
    """Probes we run and relays we do for others; fields are set up by ``Membership``."""

    def _probe_period(self, now: float) -> None:
        """A new protocol period: judge the last regular probe, start the next."""
        if now < self._next_probe_at:
            return
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

    def _hint_unreachable(self, peer_id: str, now: float) -> None:
        # Queue it for an out-of-turn probe unless one is already on its way.
        m = self._members.get(peer_id)
        if m is not None and not m.is_self and m.state is not DEAD:
            busy = any(p.target_id == peer_id for p in self._probes.values())
            if not busy and peer_id not in self._urgent:
                self._urgent.append(peer_id)
            self._start_urgent_probe(now)

    def _on_ping(self, msg: Ping) -> None:
        if msg.target_id != self.self_id:
            # The address now belongs to someone else (e.g. a new peer id
            # on a reused port): no Ack, so the prober suspects the old id.
            self._stats["dropped_misdirected_ping"] += 1
        else:
            self._send(msg.from_id, msg.from_addr, lambda: Ack(msg.seq, *self._header(), self._piggyback(msg.from_id)))

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

    def _on_indirect_ack(self, msg: IndirectAck, now: float) -> None:
        probe = self._probes.get(msg.seq)
        if probe is not None and probe.target_id == msg.target_id:
            del self._probes[msg.seq]
            self._stats["probes_acked_indirect"] += 1
            self._apply(MemberUpdate(msg.target_id, probe.target_addr, msg.target_incarnation, ALIVE, None), now)

    def _expire_relays(self, now: float) -> None:
        for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
            del self._relays[seq]

    def _insert_probe_target(self, mid: str) -> None:
        # Into the rest of the current round, at a random place (memberlist).
        if mid in self._probe_order[self._probe_pos :]:
            return
        self._probe_order.insert(self._rng.randint(self._probe_pos, len(self._probe_order)), mid)
