"""Every timer and bound of the gossip layer, in one frozen object.

Modelled on hashicorp/memberlist's ``Config``: each field says what it means,
how it enters the formulas and what turning it up or down costs.  Names carry
their unit last (``probe_interval_s``).  Use a preset (:meth:`GossipConfig.local`,
:meth:`GossipConfig.lan`, :meth:`GossipConfig.simulation`) and
``dataclasses.replace`` to adjust single fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GossipConfig"]


@dataclass(frozen=True)
class GossipConfig:
    # ---- failure detection -------------------------------------------------

    probe_interval_s: float
    """Length of a protocol period: each member starts one probe (a Ping to the
    next member of its shuffled round-robin list) per period.  Every other
    timer scales with it.  Lower detects failures sooner and spreads news
    faster, at proportionally more messages per second (still O(1) per member
    per period) and more false suspicions under CPU starvation."""

    probe_timeout_s: float
    """How long to wait for the direct Ack before asking ``indirect_probes``
    others to probe on our behalf (PingReq).  Must be well above the network
    round trip (loopback: well under 1 ms; a loaded Python peer: a few ms) and
    below ``probe_interval_s``, because the indirect probes need the rest of the
    period.  No Ack, direct or indirect, by the end of the period (the probe's
    start + ``probe_interval_s``) makes the target SUSPECT."""

    indirect_probes: int
    """k, the number of members asked to probe a target that missed its direct
    Ack.  Protects against a broken link between just the two of us (SWIM's
    indirect probing).  Higher tolerates more link faults at k more messages
    per missed probe."""

    suspicion_mult: float
    """Suspicion timeout = ``suspicion_mult * max(1, log10(n)) * probe_interval_s``
    (memberlist's formula; n = members in the table).  A SUSPECT member that
    has not refuted by then is declared DEAD.  This is the pause a member
    survives: a process stopped (SIGSTOP, GC, swap) for less than this is never
    declared dead.  Higher means fewer false positives and slower detection.
    The log term gives rumours of a refutation time to cross a bigger cluster."""

    retransmit_mult: int
    """Each piggybacked update is sent ``retransmit_mult * ceil(log10(n + 1))``
    times by every member that learns it (memberlist's RetransmitMult).  Enough
    for an epidemic to reach all n members with high probability; higher costs
    piggyback space and so freshness of other updates."""

    piggyback_updates_max: int
    """Most member updates carried by one Ping/Ack/PingReq.  Bounds message
    size (about 45 bytes per update with its load) and therefore how fast the
    broadcast queue drains: each member sends about two messages per period,
    so about ``2 * piggyback_updates_max`` updates leave it per period."""

    # ---- bounds ------------------------------------------------------------

    members_max: int
    """Hard bound on the member table, self included (and on the number of
    entries accepted in a Sync).  When full, a new member evicts the DEAD member
    that died longest ago; if none is dead, the new member is refused and
    counted (``statistics().members_refused``): live members are never evicted
    to make room."""

    dead_member_retain_s: float
    """How long a DEAD member stays in the table (so that its death keeps
    overriding stale ALIVE rumours still in flight, and so that push/pull can
    retry it to heal a partition) before it is forgotten.  After forgetting, a
    bounded tombstone (id → incarnation) still refuses ALIVE rumours that are
    not newer.  Must be far above the lifetime of a rumour (retransmit limit ×
    a few periods)."""

    # ---- joining and anti-entropy -----------------------------------------

    push_pull_interval_s: float
    """Every this often, a full state exchange (Sync) with one random member,
    sometimes a recently dead one (heals partitions and repairs anything the
    epidemic missed).  A Sync is O(n) bytes, so keep this long for big
    clusters; memberlist's LAN default is 30 s."""

    rejoin_interval_s: float
    """While we see no live peer at all, re-send the join Sync to the seeds and
    remembered peers this often (a peer may start before its seeds)."""

    join_known_max: int
    """Most remembered peers (from the store) that ``join`` contacts, besides
    the seeds: bounds the one-off join burst."""

    refute_fanout_max: int
    """When we refute a suspicion (or notice we were paused), send our new
    incarnation directly to at most this many members instead of waiting for
    the epidemic: a paused peer is then cleared at every suspecter well within
    the suspicion timeout.  Rate-limited to one fan-out per probe period; a
    one-off burst like the join Sync, rare in steady state."""

    pause_detect_gap_s: float
    """If two consecutive inputs (ticks or messages) are further apart than
    this, we were paused (SIGSTOP, a long GC, a starved event loop): our own
    running timers are shifted by the gap (we must not declare others dead
    for our own silence) and we refute pre-emptively with incarnation + 1.
    The edge must tick far more often than this (every 20–50 ms)."""

    # ---- derived quantities -----------------------------------------------

    def suspicion_timeout_s(self, n_members: int) -> float:
        """``suspicion_mult * max(1, log10(n)) * probe_interval_s``."""
        scale = max(1.0, math.log10(max(1, n_members)))
        return self.suspicion_mult * scale * self.probe_interval_s

    def retransmit_limit(self, n_members: int) -> int:
        """``retransmit_mult * ceil(log10(n + 1))`` (at least 1)."""
        return max(1, self.retransmit_mult * math.ceil(math.log10(max(0, n_members) + 1)))

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("need 0 < probe_timeout_s < probe_interval_s")
        if self.indirect_probes < 0 or self.piggyback_updates_max < 1 or self.members_max < 2:
            raise ValueError("indirect_probes >= 0, piggyback_updates_max >= 1, members_max >= 2")
        if self.suspicion_mult <= 0 or self.retransmit_mult < 1:
            raise ValueError("suspicion_mult > 0 and retransmit_mult >= 1")
        if self.pause_detect_gap_s < self.probe_timeout_s:
            raise ValueError("pause_detect_gap_s must be >= probe_timeout_s")

    # ---- presets -----------------------------------------------------------

    @classmethod
    def local(cls) -> GossipConfig:
        """Loopback clusters (tests, the process harness, one machine).

        Targets: a kill -9'd peer is DEAD in every view within 2 s; a restarted
        peer is ALIVE in every view within 1 s; a peer paused for less than the
        suspicion timeout (0.8 s for n ≤ 10) is never declared dead.

        Budget for the 2 s target: a kill closes the peer's TCP links, the edge
        reports ``connection_lost`` and every peer probes it at once instead of
        waiting its turn; the probe fails by the end of its period (0.2 s →
        SUSPECT), and the suspicion timer (0.8 s) runs at every peer that
        suspects it, so each declares it dead ≈ 1.0–1.2 s after the kill
        (tick granularity included).  Without the TCP hint, the round-robin
        still finds it within a few periods (the first of n − 1 probers takes
        ≈ 1.6 periods on average) and the suspect/dead rumour spreads in
        ≈ log2(n) periods: ≈ 1.5–2 s at n = 10.  0.1 s probe timeout is 100×
        a loaded loopback round trip; 0.2 s periods cost ~10 messages/s/peer.
        The restart target is met by the join Sync sent straight to every
        remembered peer (join_known_max = 16 ≥ the cluster).
        """
        return cls(
            probe_interval_s=0.2,
            probe_timeout_s=0.1,
            indirect_probes=3,
            suspicion_mult=4,
            retransmit_mult=4,
            piggyback_updates_max=16,
            members_max=1024,
            dead_member_retain_s=30.0,
            push_pull_interval_s=5.0,
            rejoin_interval_s=0.5,
            join_known_max=16,
            refute_fanout_max=16,
            pause_detect_gap_s=0.2,
        )

    @classmethod
    def lan(cls) -> GossipConfig:
        """memberlist's DefaultLANConfig numbers: 1 s probes, 500 ms probe
        timeout, k = 3, SuspicionMult 4, RetransmitMult 4, push/pull 30 s.
        Detection ≈ 6–10 s at 10–100 members, as memberlist reports."""
        return cls(
            probe_interval_s=1.0,
            probe_timeout_s=0.5,
            indirect_probes=3,
            suspicion_mult=4,
            retransmit_mult=4,
            piggyback_updates_max=16,
            members_max=4096,
            dead_member_retain_s=120.0,
            push_pull_interval_s=30.0,
            rejoin_interval_s=5.0,
            join_known_max=16,
            refute_fanout_max=8,
            pause_detect_gap_s=1.0,
        )

    @classmethod
    def simulation(cls) -> GossipConfig:
        """For sim/'s virtual clock: the local timers (so simulated results
        carry over to the loopback harness) but a short dead-member retention,
        so that forgetting and re-learning are exercised within a short run."""
        from dataclasses import replace

        return replace(cls.local(), dead_member_retain_s=5.0, push_pull_interval_s=2.0)
