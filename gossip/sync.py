"""Sync: joining and anti-entropy (memberlist's push/pull).

A joining peer sends a full-state Sync, reply requested, to every seed and to
at most ``join_known_max`` peers it knew before a restart, and retries every
``rejoin_interval_s`` while it sees no live peer.  Every
``push_pull_interval_s`` it exchanges full state with one member — sometimes a
DEAD one: if that one is alive behind a healed partition, the exchange tells
it it was declared dead and it refutes.  The O(n) Sync goes out only here.

A mixin of :class:`gossip.membership.Membership`; no I/O.
"""

from __future__ import annotations

from gossip.dissemination import RANK_STATE
from gossip.messages import DEAD, Sync


class SyncMixin:
    """Join, rejoin and push/pull; fields are set up by ``Membership``."""

    def _start_join(self, seed_addrs: list[str], known: list[tuple[str, str]], now: float) -> None:
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
        self._enqueue(self.self_id, RANK_STATE)

    def _on_sync(self, msg: Sync) -> None:
        if msg.reply:
            self._send(msg.from_id, msg.from_addr, lambda: Sync(*self._header(), self._full_state(), False))

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
