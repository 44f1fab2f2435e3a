"""What the executor core knows about the other peers. Sans-IO.

A thin layer over the SWIM core (`gossip.membership.Membership`) that answers
the executor's questions: who is alive and where, how loaded each peer is,
how long a peer has been dead, and whom to push a new job to.

Loads come from gossip (each peer publishes its own at most once per probe
period) and are always somewhat stale. Two corrections keep the balancer from
acting on news that this peer itself has made obsolete:

* direct evidence: a steal request carries the thief's exact load;
* our own moves: jobs we handed to a peer (or took from it) since its last
  published load are added to (or taken from) our view of it, so that a burst
  of submissions is not all pushed to the one peer that looked idle a moment
  ago (herding on stale information, RESEARCH.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from executor.core import balance
from executor.config import Config
from gossip.membership import GOSSIP_MESSAGES, MemberState, Membership


@dataclass(slots=True)
class _View:
    load: balance.PeerLoad
    version: tuple[int, int]  # (incarnation, load version) it came from
    delta: int = 0  # jobs we moved to (+) or from (-) that peer since then
    observed_at: float = float("-inf")  # when `load` came first-hand from the peer

    def current(self) -> balance.PeerLoad:
        load = self.load
        if not self.delta:
            return load
        return balance.PeerLoad(load.peer_id, max(0, load.queued + self.delta), load.running, load.slots)


class Cluster:
    def __init__(self, peer_id: str, addr: str, incarnation: int, config: Config, rng: random.Random, now: float):
        self.peer_id = peer_id
        self.addr = addr
        self.config = config
        self.rng = rng
        self.started_at = now
        self.membership = Membership(peer_id, addr, incarnation, config.gossip, rng, now)
        self.balance_config = balance.BalanceConfig(
            steal_threshold=config.steal_threshold, steal_batch_max=config.handoff_batch_max
        )
        self._views: dict[str, _View] = {}
        self._loads: list[balance.PeerLoad] | None = None  # built at most once per tick
        self._heard_at: dict[str, str] = {}  # peer id -> address its last link announced
        self._now = now
        # Gossip publishes a load at most once per probe period, so a load a
        # peer told us itself stays the better news for that long.
        self._fresh_s = config.gossip.probe_interval_s
        self.dead_since: dict[str, float] = {}

    # --- membership passthrough: each returns membership actions

    def join(self, seeds: list[str], known: dict[str, str], now: float) -> list:
        return self.membership.join(seeds, list(known.items()), now)

    def tick(self, now: float) -> list:
        self._loads = None
        self._now = now
        return self.membership.tick(now)

    def heard_from(self, peer_id: str, addr: str) -> None:
        """A peer's link announced `addr`: where to answer it even before
        membership has heard of it (a first steal or handoff can outrun the
        gossip that introduces its sender)."""
        if len(self._heard_at) < self.config.gossip.members_max or peer_id in self._heard_at:
            self._heard_at[peer_id] = addr

    def receive(self, sender: str, msg, now: float) -> list:
        if not isinstance(msg, GOSSIP_MESSAGES):
            return []
        return self.membership.receive(sender, msg, now)

    def unreachable(self, peer_id: str, now: float) -> list:
        return self.membership.connection_lost(peer_id, now)

    def set_local_load(self, load: balance.PeerLoad) -> None:
        self.membership.set_local_load(load.queued, load.running, load.slots)

    def note_state(self, peer_id: str, state: MemberState, now: float) -> None:
        if state is MemberState.DEAD:
            self.dead_since.setdefault(peer_id, now)
        else:
            self.dead_since.pop(peer_id, None)
        self._views.pop(peer_id, None)
        self._loads = None

    def forgotten(self, peer_id: str) -> None:
        """Membership forgot `peer_id`: so do we. Bounded by the member table:
        a forgotten peer counts as dead since our start (`dead_for`), long past
        any grace."""
        self.dead_since.pop(peer_id, None)

    # --- questions

    def is_dead(self, peer_id: str) -> bool:
        """Known dead (not merely unknown)."""
        return peer_id in self.dead_since

    def address_of(self, peer_id: str) -> str | None:
        member = self.membership.member(peer_id)
        return member.addr if member is not None else self._heard_at.get(peer_id)

    def is_alive(self, peer_id: str) -> bool:
        return self.membership.is_alive(peer_id)

    def dead_for(self, peer_id: str, now: float) -> float | None:
        """How long `peer_id` has been known dead; None while it may be alive.
        A peer membership has never heard of since we started counts as dead
        since our start (a restarted home must not wait for ever on a peer
        that died while it was down)."""
        if peer_id in self.dead_since:
            return now - self.dead_since[peer_id]
        if self.membership.member(peer_id) is None:
            return now - self.started_at
        return None

    def loads(self) -> list[balance.PeerLoad]:
        """Our view of every other alive peer's load, with our own moves
        applied. Built once per tick (O(members)), then kept up to date by
        `moved` and `observed`, so that a burst of submissions does not scan
        the member table once per job."""
        if self._loads is None:
            self._loads = self._build_loads()
        return self._loads

    def _build_loads(self) -> list[balance.PeerLoad]:
        out = []
        alive = self.membership.alive_peers()
        if len(alive) > self.config.balance_sample_max:
            # A large cluster: look at a random sample (power of d choices);
            # the cost of a decision stays constant whatever the size.
            alive = self.rng.sample(alive, self.config.balance_sample_max)
        for m in alive:
            if m.load is None:
                continue
            version = (m.incarnation, m.load.version)
            view = self._views.get(m.id)
            if view is not None and view.version != version and self._now - view.observed_at < self._fresh_s:
                view.version = version  # first-hand news is newer than what gossip brings now
            elif view is None or view.version != version:
                load = balance.PeerLoad(m.id, m.load.queued, m.load.running, max(1, m.load.slots))
                view = self._views[m.id] = _View(load, version)
            out.append(view.current())
        return out

    def moved(self, peer_id: str, jobs: int) -> None:
        """We gave `jobs` to `peer_id` (negative: took them from it)."""
        view = self._views.get(peer_id)
        if view is not None:
            view.delta += jobs
            self._refresh(peer_id, view)

    def observed(self, load: balance.PeerLoad) -> None:
        """First-hand load of a peer (it came with its own message)."""
        view = self._views.get(load.peer_id)
        if view is not None:
            view.load, view.delta, view.observed_at = load, 0, self._now
            self._refresh(load.peer_id, view)

    def _refresh(self, peer_id: str, view: _View) -> None:
        """Update the cached list in place (no rescan of the member table)."""
        if self._loads is None:
            return
        for i, load in enumerate(self._loads):
            if load.peer_id == peer_id:
                self._loads[i] = view.current()
                return

    def push_target(self, me: balance.PeerLoad, width: int = 1) -> str | None:
        """Where a new job `width` slots wide should go (None: keep it)."""
        others = self.loads()
        if width > 1:
            others = [p for p in others if p.slots >= width]
        if not others:
            return None
        return balance.choose_push_target(me, others, self.rng, self.balance_config, width)

    def widest(self) -> int:
        """The most slots any other alive peer in our view has (0: none)."""
        return max((p.slots for p in self.loads()), default=0)

    def victim(self, me: balance.PeerLoad) -> balance.PeerLoad | None:
        others = self.loads()
        victim_id = balance.choose_victim(me, others, self.rng, self.balance_config)
        return next((p for p in others if p.peer_id == victim_id), None)

    def peer_lines(self, me: balance.PeerLoad) -> list[str]:
        lines = []
        for m in sorted(self.membership.members(), key=lambda m: m.id):
            if m.is_self:
                q, r, s = me.queued, me.running, me.slots
            elif m.load is not None:
                q, r, s = m.load.queued, m.load.running, m.load.slots
            else:
                q = r = s = "-"
            mark = " self" if m.is_self else ""
            lines.append(
                f"{m.id} {m.addr} {m.state.value} incarnation={m.incarnation} queued={q} running={r} slots={s}{mark}"
            )
        return lines
