"""Tests of the pure balancing policy in executor/core/balance.py.

Unit tests pin the edge cases of each function; the property tests run a small model of
a cluster exchanging jobs under the policy, with stale views, lost messages and crashes,
and check safety after every step and convergence once faults stop.

The model (one round)
---------------------
State: each peer has ``slots``, a fixed set of running job ids (the model is static:
running jobs never finish, so they never move and never disappear) and a list of
queued job ids. Every job id is distinct.

1. Views. Each peer's view of every other peer is that peer's load at the start of
   this round or at the start of the previous round (stale by one round), picked at
   random per entry. A peer always knows its own current load.
2. Requests. Every peer, in a random order, may act as thief: ``choose_victim`` on its
   view, then ``steal_request_size`` on its view of the victim. The request carries the
   thief's current load. A thief has at most one request outstanding, which this
   round structure guarantees. Requests do not change state.
3. Grants. The victims handle the requests in a random order. Each victim computes
   ``grant_size`` from its *current* load, in which jobs it granted earlier this round
   are no longer counted, and the load the request carried. It moves that many queued
   ids (from the tail of its queue) into a pending handoff: the victim has persisted
   "these ids are on their way to the thief" and no longer counts them as its own.
4. Delivery. Each pending handoff settles, in a random order, with one outcome:
   - DELIVERED: the grant arrives, the thief persists the ids, the ack arrives, and the
     victim forgets the handoff.
   - GRANT_LOST: the grant is lost, or the thief crashes before persisting. The
     victim's ack timeout fires and it takes the ids back into its queue.
   - ACK_LOST_RECLAIM: the thief persisted the ids (and may have crashed afterwards),
     but the ack is lost or late past the victim's timeout, so the victim takes the ids
     back. Both peers now hold them: a transient duplicate, which the model checks is
     there. When the thief gets the victim's reclaim notice (retried until
     acknowledged), it drops its copies by id: the reclaim wins.
   - ACK_LOST_RETRY: the thief persisted the ids but the ack is lost; the victim resends
     the grant before its timeout, the thief recognises the ids it already holds
     (dedup by id: set semantics, no second copy) and acks again.
   In the fault-free convergence phase every handoff is DELIVERED.

After every step: the distinct job ids across holders and pending handoffs are exactly
the initial ones; outside the ACK_LOST_RECLAIM window no id is held by two peers.
After every round: the potential did not increase, and strictly decreased with each
exchange that moved jobs (checked by replaying the round's successful moves one by one).
"""

from __future__ import annotations

import enum
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.core.balance import (
    BalanceConfig,
    PeerLoad,
    choose_push_target,
    choose_victim,
    grant_size,
    movable_jobs,
    steal_request_size,
    steal_warranted,
)

CONFIG = BalanceConfig()


def pl(peer_id: str, queued: int, running: int = 0, slots: int = 1) -> PeerLoad:
    return PeerLoad(peer_id=peer_id, queued=queued, running=running, slots=slots)


# ---------------------------------------------------------------------------------------
# Unit tests


def test_peer_load_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        pl("a", 0, 0, slots=0)
    with pytest.raises(ValueError):
        pl("a", -1, 0)
    with pytest.raises(ValueError):
        pl("a", 0, -1)
    assert pl("a", 3, 1, slots=2).jobs == 4
    assert pl("a", 3, 1, slots=2).load == 2.0


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        BalanceConfig(steal_threshold=-0.5)
    with pytest.raises(ValueError):
        BalanceConfig(steal_threshold=float("nan"))
    with pytest.raises(ValueError):
        BalanceConfig(steal_batch_max=0)


def test_movable_jobs_is_half_the_difference_with_equal_slots() -> None:
    assert movable_jobs(pl("v", 10), pl("t", 0)) == 5
    assert movable_jobs(pl("v", 9), pl("t", 0)) == 4
    assert movable_jobs(pl("v", 1), pl("t", 0)) == 0
    assert movable_jobs(pl("v", 0), pl("t", 5)) == 0
    # 4 slots with 12 jobs (load 3) and 1 slot with 0 jobs: moving 2 leaves 10/4 = 2.5
    # against 2/1 = 2; moving 3 would leave 9/4 = 2.25 against 3.
    assert movable_jobs(pl("v", 12, slots=4), pl("t", 0, slots=1)) == 2


def test_choose_victim_none_when_balanced() -> None:
    rng = random.Random(1)
    others = [pl("b", 5), pl("c", 5)]
    assert choose_victim(pl("a", 5), others, rng, CONFIG) is None
    # A difference of one job is balanced.
    assert choose_victim(pl("a", 4), [pl("b", 5), pl("c", 5)], rng, CONFIG) is None
    # Normalised: 2 jobs on 1 slot against 8 jobs on 4 slots is balanced.
    assert choose_victim(pl("a", 2), [pl("b", 8, slots=4)], rng, CONFIG) is None


def test_choose_victim_none_when_not_below_mean() -> None:
    rng = random.Random(1)
    # a is at the mean (0 + 5 + 10) / 3 = 5: c is 5 jobs ahead, but b is the one to steal.
    assert choose_victim(pl("a", 5), [pl("b", 0), pl("c", 10)], rng, CONFIG) is None
    # Capacity-weighted mean: 12 jobs on 1 + 3 slots is 3 per slot, and a (3 on 1 slot)
    # is not below it although b's 9 jobs are many more.
    assert choose_victim(pl("a", 3), [pl("b", 9, slots=3)], rng, CONFIG) is None
    # One job lower and a is below the mean, and one job can move (9/3 >= 3/1).
    assert choose_victim(pl("a", 2), [pl("b", 10, slots=3)], rng, CONFIG) == "b"


def test_choose_victim_never_picks_lighter_or_empty_queue() -> None:
    rng = random.Random(7)
    others = [pl("light", 0), pl("busy", 0, running=40, slots=1), pl("heavy", 10)]
    for _ in range(200):
        assert choose_victim(pl("me", 2), others, rng, CONFIG) == "heavy"


def test_choose_victim_none_when_heavier_peers_have_nothing_queued() -> None:
    rng = random.Random(3)
    others = [pl("b", 0, running=4, slots=1), pl("c", 0, running=9, slots=1)]
    assert choose_victim(pl("a", 0), others, rng, CONFIG) is None


def test_choose_victim_better_of_two_spreads_over_victims() -> None:
    rng = random.Random(11)
    others = [pl(f"p{i}", 10 + i) for i in range(6)]
    picks = Counter(choose_victim(pl("me", 0), others, rng, CONFIG) for _ in range(2000))
    # The lightest candidate can never win a pair; the heaviest wins most often, but
    # not always: thieves do not herd on one victim.
    assert picks["p0"] == 0
    assert picks.most_common(1)[0][0] == "p5"
    assert picks["p5"] < 1000
    assert set(picks) == {"p1", "p2", "p3", "p4", "p5"}


def test_choose_victim_independent_of_view_order() -> None:
    others = [pl(f"p{i}", 10 + i) for i in range(6)]
    a = [choose_victim(pl("me", 0), others, random.Random(s), CONFIG) for s in range(50)]
    b = [choose_victim(pl("me", 0), others[::-1], random.Random(s), CONFIG) for s in range(50)]
    assert a == b


def test_choose_victim_rejects_self_in_view() -> None:
    with pytest.raises(AssertionError):
        choose_victim(pl("a", 0), [pl("a", 5)], random.Random(0), CONFIG)


def test_steal_request_size() -> None:
    assert steal_request_size(pl("t", 0), pl("v", 10), CONFIG) == 5
    assert steal_request_size(pl("t", 0), pl("v", 2), CONFIG) == 1
    assert steal_request_size(pl("t", 0), pl("v", 1), CONFIG) == 0
    assert steal_request_size(pl("t", 5), pl("v", 3), CONFIG) == 0
    # Only queued jobs can be asked for.
    assert steal_request_size(pl("t", 0), pl("v", 1, running=9), CONFIG) == 1
    assert steal_request_size(pl("t", 0), pl("v", 0, running=9), CONFIG) == 0
    # Capped by the batch bound.
    assert steal_request_size(pl("t", 0), pl("v", 100), BalanceConfig(steal_batch_max=8)) == 8
    # A higher threshold is hysteresis: a gap of 3 jobs is not worth asking for.
    lazy = BalanceConfig(steal_threshold=3.0)
    assert steal_request_size(pl("t", 0), pl("v", 3), lazy) == 0
    assert steal_request_size(pl("t", 0), pl("v", 4), lazy) == 2


def test_grant_size_edge_cases() -> None:
    # Never more than requested, than queued, than the batch bound.
    assert grant_size(pl("v", 10), pl("t", 0), 3, CONFIG) == 3
    assert grant_size(pl("v", 2, running=20), pl("t", 0), 10, CONFIG) == 2
    assert grant_size(pl("v", 100), pl("t", 0), 100, BalanceConfig(steal_batch_max=7)) == 7
    # Nothing requested, nothing queued, or the victim is no longer ahead.
    assert grant_size(pl("v", 10), pl("t", 0), 0, CONFIG) == 0
    assert grant_size(pl("v", 0, running=10), pl("t", 0), 5, CONFIG) == 0
    assert grant_size(pl("v", 3), pl("t", 3), 5, CONFIG) == 0
    assert grant_size(pl("v", 1), pl("t", 0), 5, CONFIG) == 0
    # The victim's own load has fallen since the thief looked: it trims the request.
    assert grant_size(pl("v", 4), pl("t", 0), 10, CONFIG) == 2
    # Slots: 12 jobs on 4 slots against 0 on 1 slot gives 2, not 6 (see movable_jobs).
    assert grant_size(pl("v", 12, slots=4), pl("t", 0), 6, CONFIG) == 2


def test_choose_push_target() -> None:
    cfg = CONFIG
    # Alone: keep.
    assert choose_push_target(pl("me", 9), [], random.Random(0), cfg) is None
    # One other peer: both are always sampled.
    assert choose_push_target(pl("me", 5), [pl("b", 0)], random.Random(0), cfg) == "b"
    assert choose_push_target(pl("me", 5), [pl("b", 4)], random.Random(0), cfg) == "b"
    assert choose_push_target(pl("me", 5), [pl("b", 5)], random.Random(0), cfg) is None
    assert choose_push_target(pl("me", 0), [pl("b", 5)], random.Random(0), cfg) is None
    # Normalised: 4 slots with 4 jobs is lighter than 1 slot with 2 jobs.
    assert choose_push_target(pl("me", 2), [pl("b", 4, slots=4)], random.Random(0), cfg) == "b"
    # With many peers it only ever picks a peer lighter than me, and never the
    # heaviest of the sample.
    others = [pl("x", 0), pl("y", 9), pl("z", 9)]
    picks = Counter(choose_push_target(pl("me", 9), others, random.Random(s), cfg) for s in range(300))
    assert set(picks) == {"x", None}
    assert picks["x"] > 0 and picks[None] > 0


@given(
    me=st.tuples(st.integers(0, 30), st.integers(0, 4), st.integers(1, 4)),
    others=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 4), st.integers(1, 4)), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_push_target_is_lighter_and_push_does_not_invert(me, others, seed) -> None:
    me_load = pl("me", *me)
    view = [pl(f"p{i}", *o) for i, o in enumerate(others)]
    target = choose_push_target(me_load, view, random.Random(seed), CONFIG)
    if target is None:
        return
    t = next(p for p in view if p.peer_id == target)
    # After the push the target is not above me (a steal would not bounce the job back).
    assert Fraction(t.jobs + 1, t.slots) <= Fraction(me_load.jobs, me_load.slots)


@given(
    v=st.tuples(st.integers(0, 60), st.integers(0, 4), st.integers(1, 4)),
    t=st.tuples(st.integers(0, 60), st.integers(0, 4), st.integers(1, 4)),
    requested=st.integers(-2, 80),
    batch=st.integers(1, 64),
    threshold=st.sampled_from([0.0, 1.0, 1.999, 2.0, 3.5]),
)
def test_grant_size_bounds(v, t, requested, batch, threshold) -> None:
    cfg = BalanceConfig(steal_threshold=threshold, steal_batch_max=batch)
    victim, thief = pl("v", *v), pl("t", *t)
    k = grant_size(victim, thief, requested, cfg)
    assert 0 <= k <= max(0, requested)
    assert k <= victim.queued and k <= batch
    # The victim never drops below the thief.
    if k > 0:
        assert Fraction(victim.jobs - k, victim.slots) >= Fraction(thief.jobs + k, thief.slots)
    # Maximal: one more job would put the victim below the thief, unless another bound
    # (requested, queued, batch) stopped it.
    if k < min(requested, victim.queued, batch):
        assert Fraction(victim.jobs - k - 1, victim.slots) < Fraction(thief.jobs + k + 1, thief.slots)
    # A request computed on the victim's own load is granted in full.
    r = steal_request_size(thief, victim, cfg)
    assert grant_size(victim, thief, r, cfg) == r
    assert (r >= 1) == (victim.queued > 0 and steal_warranted(victim, thief, cfg))


# ---------------------------------------------------------------------------------------
# The model


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    GRANT_LOST = "grant_lost"
    ACK_LOST_RECLAIM = "ack_lost_reclaim"
    ACK_LOST_RETRY = "ack_lost_retry"


@dataclass
class Peer:
    peer_id: str
    slots: int
    running: frozenset[int]
    queued: list[int] = field(default_factory=list)

    def load(self) -> PeerLoad:
        return PeerLoad(self.peer_id, len(self.queued), len(self.running), self.slots)


@dataclass
class Handoff:
    victim: str
    thief: str
    ids: list[int]
    grant_index: int  # Position in the order the victims granted (step 3).


SLOTS_MAX = 4
SLOTS_LCM = 12  # Lowest common multiple of 1..SLOTS_MAX, to keep Phi an exact integer.


def potential(loads: dict[str, tuple[int, int]]) -> Fraction:
    """Phi = sum(jobs**2 / slots), exact. ``loads`` maps peer id to (jobs, slots)."""
    return Fraction(sum(j * j * (SLOTS_LCM // s) for j, s in loads.values()), SLOTS_LCM)


@dataclass
class Cluster:
    peers: dict[str, Peer]
    all_ids: frozenset[int]
    config: BalanceConfig
    rng: random.Random
    previous_snapshot: dict[str, PeerLoad] | None = None
    duplicates_seen: int = 0

    @classmethod
    def build(cls, specs, config: BalanceConfig, rng: random.Random) -> "Cluster":
        peers: dict[str, Peer] = {}
        next_id = 0
        for i, (slots, running, queued) in enumerate(specs):
            run_ids = frozenset(range(next_id, next_id + running))
            next_id += running
            peers[f"p{i}"] = Peer(f"p{i}", slots, run_ids, list(range(next_id, next_id + queued)))
            next_id += queued
        return cls(peers, frozenset(range(next_id)), config, rng)

    def snapshot(self) -> dict[str, PeerLoad]:
        return {pid: p.load() for pid, p in self.peers.items()}

    def jobs_slots(self) -> dict[str, tuple[int, int]]:
        return {pid: (len(p.queued) + len(p.running), p.slots) for pid, p in self.peers.items()}

    def check_safety(self, in_flight: list[Handoff], transient_dup: frozenset[int] = frozenset()) -> None:
        holders: Counter[int] = Counter()
        for p in self.peers.values():
            assert len(set(p.queued)) == len(p.queued), "a peer holds an id twice"
            assert not (set(p.queued) & p.running)
            holders.update(p.queued)
            holders.update(p.running)
        pending = {i for h in in_flight for i in h.ids}
        # Conservation: nothing lost, nothing invented.
        assert set(holders) | pending == self.all_ids
        # No job held by two peers, except inside an unsettled ACK_LOST_RECLAIM.
        doubled = {i for i, n in holders.items() if n > 1}
        assert doubled <= transient_dup, f"ids held twice: {sorted(doubled - transient_dup)}"
        assert all(n <= 2 for n in holders.values())

    def round(self, faults: bool) -> int:
        """One round as described in the module docstring; returns the jobs moved."""
        start = self.snapshot()
        stale = self.previous_snapshot or start
        self.previous_snapshot = start
        order = list(self.peers)

        # Step 1 and 2: views and requests.
        self.rng.shuffle(order)
        requests: list[tuple[str, str, PeerLoad, int]] = []
        for thief_id in order:
            me = self.peers[thief_id].load()
            view = [
                (stale if self.rng.random() < 0.5 else start)[pid]
                for pid in self.peers
                if pid != thief_id
            ]
            victim_id = choose_victim(me, view, self.rng, self.config)
            if victim_id is None:
                continue
            victim_view = next(p for p in view if p.peer_id == victim_id)
            assert victim_view.queued > 0
            assert victim_view.load_exact > me.load_exact  # Never a lighter peer.
            size = steal_request_size(me, victim_view, self.config)
            assert 1 <= size <= self.config.steal_batch_max
            requests.append((thief_id, victim_id, me, size))

        # Step 3: grants, computed by each victim from its current load.
        self.rng.shuffle(requests)
        in_flight: list[Handoff] = []
        for thief_id, victim_id, carried, size in requests:
            victim = self.peers[victim_id]
            vload = victim.load()
            # The potential argument needs the thief to be no heavier than its request
            # said: it has one request outstanding and nothing arrives before step 4.
            assert self.peers[thief_id].load().jobs <= carried.jobs
            k = grant_size(vload, carried, size, self.config)
            assert 0 <= k <= min(size, vload.queued, self.config.steal_batch_max)
            if k == 0:
                continue
            ids = victim.queued[len(victim.queued) - k :]
            del victim.queued[len(victim.queued) - k :]
            after = victim.load()
            # The victim never drops below the thief (as the request described it).
            assert Fraction(after.jobs, after.slots) >= Fraction(carried.jobs + k, carried.slots)
            in_flight.append(Handoff(victim_id, thief_id, ids, len(in_flight)))
            self.check_safety(in_flight)

        # Step 4: delivery.
        self.rng.shuffle(in_flight)
        pending = list(in_flight)
        succeeded: list[Handoff] = []
        for h in in_flight:
            outcome = self.rng.choice(list(Outcome)) if faults else Outcome.DELIVERED
            victim, thief = self.peers[h.victim], self.peers[h.thief]
            pending.remove(h)
            if outcome is Outcome.DELIVERED:
                thief.queued.extend(h.ids)
                succeeded.append(h)
            elif outcome is Outcome.GRANT_LOST:
                victim.queued.extend(h.ids)
            elif outcome is Outcome.ACK_LOST_RECLAIM:
                thief.queued.extend(h.ids)
                victim.queued.extend(h.ids)
                dup = frozenset(h.ids)
                self.check_safety(pending, transient_dup=dup)
                self.duplicates_seen += 1
                # The reclaim notice reaches the thief, which drops its copies by id.
                thief.queued = [i for i in thief.queued if i not in dup]
            elif outcome is Outcome.ACK_LOST_RETRY:
                thief.queued.extend(h.ids)
                # The retried grant carries the same ids: the thief already has them.
                held = set(thief.queued)
                thief.queued.extend(i for i in h.ids if i not in held)
                succeeded.append(h)
            self.check_safety(pending)

        # Potential: replay the successful moves one at a time, in grant order, from
        # the round's start. Each must keep the victim at or above the thief and lower
        # Phi by at least k**2 * (1/s_v + 1/s_t); the replay must end in the real state.
        succeeded.sort(key=lambda h: h.grant_index)
        replay = {pid: (p.jobs, p.slots) for pid, p in start.items()}
        phi = potential(replay)
        for h in succeeded:
            k = len(h.ids)
            (jv, sv), (jt, st_) = replay[h.victim], replay[h.thief]
            replay[h.victim], replay[h.thief] = (jv - k, sv), (jt + k, st_)
            assert Fraction(jv - k, sv) >= Fraction(jt + k, st_)
            new_phi = potential(replay)
            assert new_phi <= phi - k * k * (Fraction(1, sv) + Fraction(1, st_))
            phi = new_phi
        assert replay == self.jobs_slots()
        moved = sum(len(h.ids) for h in succeeded)
        return moved

    def at_fixed_point(self) -> bool:
        """No peer would ask for work even with an exact view."""
        loads = self.snapshot()
        return all(
            choose_victim(me, [p for q, p in loads.items() if q != pid], random.Random(0), self.config)
            is None
            for pid, me in loads.items()
        )


def round_bound(cluster: Cluster) -> int:
    """Fault-free rounds needed to reach the fixed point, provably.

    A round that moves nothing leaves the views exact for the next round (stale and
    fresh snapshots agree), and a round with exact views that is not at the fixed point
    moves at least one job: some peer below the mean has a warranted victim, asks it,
    and the victim's grant is at least 1 unless the victim granted to an earlier thief
    in the same round. So no two consecutive rounds both move nothing. Every moving
    exchange lowers Phi by at least 1/s_v + 1/s_t >= 2 / slots_max, and Phi >= (sum of
    jobs)**2 / (sum of slots). Hence rounds <= 2 * (Phi_0 - Phi_min) / (2/slots_max) + 1.
    """
    js = cluster.jobs_slots()
    jobs_total = sum(j for j, _ in js.values())
    slots_total = sum(s for _, s in js.values())
    slots_max = max(s for _, s in js.values())
    phi_gap = potential(js) - Fraction(jobs_total * jobs_total, slots_total)
    return math.floor(phi_gap * slots_max) + 1


def fast_bound(cluster: Cluster) -> int:
    """Rounds to the fixed point in practice: ceil(D / batch) + N * (log2(max jobs) + 2).

    D is the largest deficit, in jobs, of a peer below the capacity-weighted mean. A
    thief has one request outstanding, so it takes at most one batch per round, and
    ceil(D / batch) rounds are necessary. The N * log2 term covers the halving of gaps
    by successive exchanges; it is measured, not proven (better-of-two picks are random
    and views stale): over 8000 random clusters of this file's shapes (batch 1..32) the
    rounds beyond ceil(D / batch) never exceeded 0.3 of it.
    """
    js = cluster.jobs_slots()
    jobs_total = sum(j for j, _ in js.values())
    slots_total = sum(s for _, s in js.values())
    deficit_max = max(Fraction(jobs_total * s, slots_total) - j for j, s in js.values())
    jobs_max = max(j for j, _ in js.values())
    batch_rounds = math.ceil(deficit_max / cluster.config.steal_batch_max)
    return batch_rounds + len(js) * (jobs_max.bit_length() + 2)


peer_spec = st.integers(1, 4).flatmap(
    lambda slots: st.tuples(st.just(slots), st.integers(0, slots), st.integers(0, 60))
)


def run_to_fixed_point(cluster: Cluster) -> int:
    bound = round_bound(cluster)
    rounds = 0
    while not cluster.at_fixed_point():
        cluster.round(faults=False)
        rounds += 1
        assert rounds <= bound, f"no fixed point after {rounds} rounds (bound {bound})"
    return rounds


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    specs=st.lists(peer_spec, min_size=2, max_size=8),
    fault_rounds=st.integers(0, 6),
    batch=st.sampled_from([1, 2, 8, 32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_model_safety_and_convergence(specs, fault_rounds, batch, seed) -> None:
    cluster = Cluster.build(specs, BalanceConfig(steal_batch_max=batch), random.Random(seed))
    cluster.check_safety([])
    # Faulty phase: safety after every step (checked inside round()).
    for _ in range(fault_rounds):
        cluster.round(faults=True)
    # Convergence phase: faults stop; the fixed point is reached within the bounds.
    bound = fast_bound(cluster)
    assert run_to_fixed_point(cluster) <= bound
    cluster.check_safety([])
    loads = list(cluster.snapshot().values())
    lo = min(p.load_exact for p in loads)
    # Every peer with queued work is less than one job's move ahead of each least loaded
    # peer: moving one more job would put it behind.
    for least in (q for q in loads if q.load_exact == lo):
        for p in loads:
            if p.queued > 0 and p is not least:
                assert Fraction(p.jobs - 1, p.slots) < Fraction(least.jobs + 1, least.slots)


@FAST
@given(
    slots=st.integers(1, 4),
    n=st.integers(2, 8),
    data=st.data(),
    batch=st.sampled_from([1, 8, 32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_equal_slots_converge_to_spread_one(slots, n, data, batch, seed) -> None:
    running = data.draw(st.lists(st.integers(0, slots), min_size=n, max_size=n))
    queued = data.draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    cluster = Cluster.build(list(zip([slots] * n, running, queued)), BalanceConfig(steal_batch_max=batch), random.Random(seed))
    bound = fast_bound(cluster)
    rounds = run_to_fixed_point(cluster)
    assert rounds <= bound
    jobs = [p.jobs for p in cluster.snapshot().values()]
    # Running jobs cannot move, so a peer may stay ahead by its extra running jobs;
    # with the same number running everywhere (e.g. all slots busy) the spread is 1.
    assert max(jobs) - min(jobs) <= max(1, max(running) - min(running))


@FAST
@given(
    slots=st.integers(1, 4),
    n=st.integers(2, 8),
    queued=st.lists(st.integers(0, 60), min_size=8, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_equal_slots_all_busy_converge_to_spread_one(slots, n, queued, seed) -> None:
    cluster = Cluster.build([(slots, slots, q) for q in queued[:n]], CONFIG, random.Random(seed))
    bound = fast_bound(cluster)
    rounds = run_to_fixed_point(cluster)
    assert rounds <= bound
    jobs = [p.jobs for p in cluster.snapshot().values()]
    assert max(jobs) - min(jobs) <= 1


@FAST
@given(
    specs=st.lists(st.tuples(st.integers(1, 4), st.just(0), st.integers(0, 60)), min_size=2, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_unequal_slots_converge_within_one_job(specs, seed) -> None:
    cluster = Cluster.build(specs, CONFIG, random.Random(seed))
    rounds = run_to_fixed_point(cluster)
    assert rounds <= fast_bound(cluster)
    loads = list(cluster.snapshot().values())
    lo = min(p.load_exact for p in loads)
    # Every peer is less than one job's move ahead of each least loaded peer: moving one
    # job changes the gap by 1/s_p + 1/s_least, so no single move would narrow it.
    for least in (q for q in loads if q.load_exact == lo):
        for p in loads:
            assert p.load_exact - lo < Fraction(1, p.slots) + Fraction(1, least.slots)


def test_fault_model_produces_duplicates() -> None:
    cluster = Cluster.build([(1, 0, 60), (1, 0, 0), (2, 1, 0), (1, 0, 30)], CONFIG, random.Random(5))
    for _ in range(20):
        cluster.round(faults=True)
    assert cluster.duplicates_seen > 0
    cluster.check_safety([])
