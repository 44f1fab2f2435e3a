"""The gossip messages on the wire, and the member states they carry.

Every gossip message starts with its sender's header (id, address,
incarnation, load): first-hand evidence that the sender is ALIVE at that
incarnation (gossip/state.py acts on it).  News about other members rides
along as :class:`MemberUpdate` records.  Apart from the core so that the
edges, the simulation and the tests can name a message without importing the
state machine; every class registers with the one codec (gossip/codec.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gossip.codec import message

__all__ = [
    "MemberState",
    "ALIVE",
    "SUSPECT",
    "DEAD",
    "Load",
    "MemberUpdate",
    "Ping",
    "Ack",
    "PingReq",
    "IndirectAck",
    "Announce",
    "Sync",
    "GOSSIP_MESSAGES",
]


class MemberState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


@message("load")
@dataclass(frozen=True, slots=True)
class Load:
    """A peer's load as it published it.  ``version`` grows with every
    publication within one incarnation of the peer; compare loads only for the
    same incarnation (the core does)."""

    queued: int
    running: int
    slots: int
    version: int


@message("mu")
@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """One member's record as the sender knows it.  ``load`` is None when the
    sender has no load for this member's current incarnation."""

    id: str
    addr: str
    incarnation: int
    state: MemberState
    load: Load | None


# Every gossip message starts with the sender's header:
# from_id, from_addr, from_incarnation, from_load.


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    target_id: str  # whom the sender thinks it is pinging; a mismatch gets no Ack
    updates: tuple[MemberUpdate, ...]


@message("ack")
@dataclass(frozen=True, slots=True)
class Ack:
    seq: int  # the seq of the Ping being answered
    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    updates: tuple[MemberUpdate, ...]


@message("pingreq")
@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int  # the requester's probe seq, echoed in the IndirectAck
    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    target_id: str
    target_addr: str
    updates: tuple[MemberUpdate, ...]


@message("iack")
@dataclass(frozen=True, slots=True)
class IndirectAck:
    seq: int  # the requester's probe seq
    from_id: str  # the helper
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    target_id: str
    target_incarnation: int  # as the target stated it in its Ack to the helper
    updates: tuple[MemberUpdate, ...]


@message("announce")
@dataclass(frozen=True, slots=True)
class Announce:
    """Unsolicited 'I am alive at this incarnation' (sent after a refutation)."""

    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    updates: tuple[MemberUpdate, ...]


@message("sync")
@dataclass(frozen=True, slots=True)
class Sync:
    """Full state exchange (memberlist's push/pull).  ``reply`` asks the
    receiver to answer with its own full state."""

    from_id: str
    from_addr: str
    from_incarnation: int
    from_load: Load | None
    members: tuple[MemberUpdate, ...]
    reply: bool


GOSSIP_MESSAGES: tuple[type, ...] = (Ping, Ack, PingReq, IndirectAck, Announce, Sync)
