"""Load-balancing policy: who steals from whom, how much, and where a submission goes.

Theory of operation
===================

This module is pure policy: no trio, no I/O, no clock and no global random. Callers
pass in load snapshots and a seeded ``random.Random``; the functions return decisions.

Load. A peer's load is ``jobs / slots`` with ``jobs = queued + running``, so a peer with
four slots and eight jobs is exactly as busy as a peer with one slot and two jobs. Only
queued jobs ever move; running jobs stay where they run.

The exchange (thief/victim rule, as in work stealing). A peer below the cluster mean is a
*thief*. It picks a *victim* that is heavier by more than ``steal_threshold`` and asks for
half the difference. The *victim* decides how many to hand over, from its own current
load and the thief's load as carried in the request, and never gives so many that it
ends up below the thief::

    (victim_jobs - k) / victim_slots >= (thief_jobs + k) / thief_slots

Because the victim decides, a thief acting on a stale view can only ask for too much
(the victim trims the grant) or too little (the next exchange finishes the job); it can
never cause an overshoot.

Why this converges and does not oscillate. Take the potential
``Phi = sum(jobs_i ** 2 / slots_i)``. Moving ``k`` jobs from victim ``v`` to thief ``t``
changes it by ``k * (k * (1/s_v + 1/s_t) - 2 * (l_v - l_t))``. The victim's rule above is
exactly ``k * (1/s_v + 1/s_t) <= l_v - l_t``, so every exchange that moves anything
lowers ``Phi`` by at least ``k * (l_v - l_t) >= k**2 * (1/s_v + 1/s_t) >= 2 / slots_max``.
``Phi`` is bounded below, so only finitely many exchanges can move jobs, and a cycle of
states (oscillation) is impossible because ``Phi`` would have to come back up. The rule
needs the thief's real load to be no higher than the load its request carried; a thief
therefore keeps at most one steal request outstanding, and while it waits its load can
only fall (it may be robbed, its jobs finish). A job pushed to it at submission in that
window is new work, not oscillation: it can make that one exchange overshoot by at most
the pushed jobs, and later exchanges remove the excess.

Where it stops. Exchanges stop when no peer below the mean sees a victim worth robbing.
The least loaded peer is below the mean unless all loads are equal, so at that point
every peer that still has queued work is less than one job's move ahead of the least
loaded peer (moving one more job would put it behind). With equal slots that is
``max - min <= 1`` job; running jobs cannot move, so in general the spread is at most
``max(1, max_running - min_running)``.

How fast. A round in which nothing moves leaves every view exact for the next round,
and a round with exact views that is not at the fixed point moves at least one job, so
no two consecutive fault-free rounds are idle. With the ``Phi`` bound above this proves
at most ``(Phi_0 - Phi_min) * slots_max + 1`` rounds, where
``Phi_min = total_jobs**2 / total_slots``: finite but loose. In practice
(``tests/test_balance.py``, N <= 8 peers, up to 64 jobs each) it takes at most
``ceil(D / steal_batch_max) + N * (log2(max jobs) + 2)`` rounds, where ``D`` is the
largest deficit below the mean: a thief takes one batch per round, and gaps halve with
each exchange. That bound is measured and asserted by the tests, not proven.

Better of two random choices. If every thief robbed the single heaviest peer, all of
them would hit it in the same round (herding) and it would be drained below the others
while the second heaviest peer kept its queue. A thief instead samples two candidates
at random and takes the heavier (Mitzenmacher, "The Power of Two Choices in Randomized
Load Balancing", 2001; Azar, Broder, Karlin and Upfal, "Balanced Allocations", 1999):
almost as good as the heaviest, and different thieves usually pick different victims.
Submission uses the same idea in the other direction (as Sparrow does): sample two
peers, push to the lighter if that clearly helps, otherwise keep the job locally.

Hysteresis. ``steal_threshold`` is measured in *jobs' worth* of load for the pair (one
job's worth is the mean of ``1/s_v`` and ``1/s_t``; with equal slots it is one job), so
the same setting means the same thing whatever the slot counts. A gap of one job can
never be improved by moving a job (it only swaps who is ahead), which is why no single
job ping-pongs between two peers.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "BalanceConfig",
    "PeerLoad",
    "choose_push_target",
    "choose_victim",
    "grant_size",
    "movable_jobs",
    "steal_request_size",
    "steal_warranted",
]


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """A snapshot of one peer's load, as gossiped or as carried in a steal request."""

    peer_id: str
    queued: int
    running: int
    slots: int

    def __post_init__(self) -> None:
        # These arrive from other peers; the decoder should have rejected bad values
        # already, and a clear error here keeps a bad value out of the arithmetic below.
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots} for {self.peer_id!r}")
        if self.queued < 0 or self.running < 0:
            raise ValueError(
                f"queued and running must be >= 0, got {self.queued}/{self.running}"
                f" for {self.peer_id!r}"
            )

    @property
    def jobs(self) -> int:
        return self.queued + self.running

    @property
    def load(self) -> float:
        """Jobs per slot. Decisions below use exact integer arithmetic, not this float."""
        return self.jobs / self.slots

    @property
    def load_exact(self) -> Fraction:
        return Fraction(self.jobs, self.slots)


@dataclass(frozen=True)
class BalanceConfig:
    """Bounds of the balancing policy. Every field is checked in ``__post_init__``."""

    # A thief asks only if the victim is ahead by more than this many jobs' worth of
    # normalised load, where one job's worth for the pair is (1/s_victim + 1/s_thief)/2
    # (with equal slots: one job). Any value in [0, 2) means "balance as finely as
    # single jobs allow" (max - min <= 1 job with equal slots), because a move also
    # needs a gap of at least two jobs' worth to leave the victim at or above the thief;
    # 1.0 sits in the middle of that range so float rounding cannot matter. Raising it
    # above 2 trades precision for fewer exchanges: with equal slots exchanges stop at
    # max - min <= floor(steal_threshold).
    steal_threshold: float = 1.0
    # Most jobs handed over in one exchange. Larger batches converge in fewer rounds;
    # smaller ones keep frames small and limit how many jobs sit in limbo (granted but
    # not yet acknowledged) when a thief crashes or an ack is lost.
    steal_batch_max: int = 32

    def __post_init__(self) -> None:
        if not self.steal_threshold >= 0.0:  # Also rejects NaN.
            raise ValueError(f"steal_threshold must be >= 0, got {self.steal_threshold}")
        if self.steal_batch_max < 1:
            raise ValueError(f"steal_batch_max must be >= 1, got {self.steal_batch_max}")


def _gap_scaled(heavy: PeerLoad, light: PeerLoad) -> int:
    """``(l_heavy - l_light) * s_heavy * s_light``, an exact integer (negative if lighter)."""
    return heavy.jobs * light.slots - light.jobs * heavy.slots


def movable_jobs(victim: PeerLoad, thief: PeerLoad) -> int:
    """The most jobs that can move from victim to thief leaving the victim not below it.

    ``(j_v - k)/s_v >= (j_t + k)/s_t`` solves to ``k <= (j_v*s_t - j_t*s_v)/(s_v + s_t)``;
    with equal slots that is half the difference in jobs, rounded down. Queued-only and
    batch limits are applied by the callers.
    """
    return max(0, _gap_scaled(victim, thief) // (victim.slots + thief.slots))


def steal_warranted(victim: PeerLoad, thief: PeerLoad, config: BalanceConfig) -> bool:
    """Whether the pair is out of balance by more than the threshold and a move helps."""
    # Gap in jobs' worth = (l_v - l_t) / ((1/s_v + 1/s_t) / 2) = 2 * gap_scaled / (s_v + s_t).
    gap_scaled = _gap_scaled(victim, thief)
    over_threshold = 2 * gap_scaled > config.steal_threshold * (victim.slots + thief.slots)
    return over_threshold and movable_jobs(victim, thief) >= 1


def _below_mean(me: PeerLoad, others: Sequence[PeerLoad]) -> bool:
    # The mean is capacity-weighted (total jobs / total slots): the load every peer has
    # in a perfectly balanced cluster.
    jobs_total = me.jobs + sum(p.jobs for p in others)
    slots_total = me.slots + sum(p.slots for p in others)
    return me.jobs * slots_total < jobs_total * me.slots


def _check_view(me: PeerLoad, others: Sequence[PeerLoad]) -> None:
    ids = [p.peer_id for p in others]
    assert me.peer_id not in ids, f"the view of others contains me ({me.peer_id!r})"
    assert len(set(ids)) == len(ids), f"duplicate peer ids in the view: {sorted(ids)}"


def _load_key(p: PeerLoad) -> tuple[Fraction, str]:
    # Ties broken by peer id so the choice depends only on the rng, not on list order.
    return (p.load_exact, p.peer_id)


def choose_victim(
    me: PeerLoad,
    others: Sequence[PeerLoad],
    rng: random.Random,
    config: BalanceConfig,
) -> str | None:
    """The peer ``me`` should ask for work, or None if it should not steal now.

    ``me`` is this peer's current load; ``others`` is its (possibly stale) view of the
    rest. Only a peer below the mean steals, and only from a peer with queued work that
    is ahead by more than the threshold; among those it takes the heavier of two picked
    at random, so concurrent thieves spread over victims instead of herding.
    """
    _check_view(me, others)
    if not _below_mean(me, others):
        return None
    candidates = sorted(
        (p for p in others if p.queued > 0 and steal_warranted(p, me, config)),
        key=lambda p: p.peer_id,
    )
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0].peer_id
    return max(rng.sample(candidates, 2), key=_load_key).peer_id


def steal_request_size(me: PeerLoad, victim: PeerLoad, config: BalanceConfig) -> int:
    """How many jobs the thief ``me`` asks ``victim`` (its view of it) for; 0: do not ask.

    Half the difference, accounting for slots, capped by what the victim has queued and
    by ``steal_batch_max``; at least 1 whenever a steal is warranted.
    """
    if victim.queued == 0 or not steal_warranted(victim, me, config):
        return 0
    size = min(movable_jobs(victim, me), victim.queued, config.steal_batch_max)
    assert size >= 1
    return size


def grant_size(
    victim: PeerLoad, thief: PeerLoad, requested: int, config: BalanceConfig
) -> int:
    """How many queued jobs the victim hands over; decided by the victim.

    ``victim`` is the victim's own current load (jobs already granted but not yet
    acknowledged must not be counted); ``thief`` is the load the request carried. The
    grant is at most ``requested``, at most ``victim.queued``, at most
    ``steal_batch_max``, and never leaves the victim below the thief. The threshold is
    the thief's reason to ask and is not re-applied: any move the victim allows lowers
    the potential. 0 when no move helps.
    """
    if requested <= 0:
        return 0
    size = min(requested, victim.queued, config.steal_batch_max, movable_jobs(victim, thief))
    assert 0 <= size
    return size


def choose_push_target(
    me: PeerLoad,
    others: Sequence[PeerLoad],
    rng: random.Random,
    config: BalanceConfig,
    width: int = 1,
) -> str | None:
    """Where a job just submitted to ``me`` should go: a peer id, or None to keep it.
    ``width``: the slots the job takes (loads count slots).

    Power of two choices: sample two distinct peers from ``others`` plus ``me`` and take
    the less loaded. Push there only if, counting the new job on ``me``, the target is
    far enough behind that a thief in its place would steal that job (so a push never
    does what stealing would undo).
    """
    _check_view(me, others)
    if not others:
        return None
    population = sorted([me, *others], key=lambda p: p.peer_id)
    lighter = min(rng.sample(population, 2), key=_load_key)
    if lighter.peer_id == me.peer_id:
        return None
    me_with_job = dataclasses.replace(me, queued=me.queued + width)
    if steal_warranted(me_with_job, lighter, config):
        return lighter.peer_id
    return None
