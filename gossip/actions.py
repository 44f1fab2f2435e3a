"""What the membership core hands its caller: the member record and the four
actions (send, member changed, member forgotten, persist our incarnation).

Apart from the core so that every concern module (state, suspicion, probing,
dissemination, sync) and the executor can name them without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gossip.messages import Load, MemberState

__all__ = ["Member", "Send", "MemberChanged", "MemberForgotten", "PersistIncarnation", "Action"]


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    addr: str
    incarnation: int
    state: MemberState
    load: Load | None  # None until we have heard one for this peer
    state_changed_at: float
    is_self: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    """Open (or reuse) a link to ``to_addr`` and write ``frame(encode(msg))``.
    ``to_id`` is None when we do not know who listens there (a seed).  Losing
    it is fine (gossip tolerates loss); report a failed link with
    :meth:`Membership.connection_lost`."""

    to_id: str | None
    to_addr: str
    msg: Any


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A member appeared, or its state, incarnation or address changed.
    (Load changes are not reported: read ``member.load`` when you need it.)"""

    member: Member
    previous: Member | None


@dataclass(frozen=True, slots=True)
class MemberForgotten:
    """A dead member was dropped from the table (retention over, or evicted)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class PersistIncarnation:
    """Our own incarnation changed.  Store it durably before carrying out any
    later action of the same list (they may carry it)."""

    incarnation: int


Action = Send | MemberChanged | MemberForgotten | PersistIncarnation
