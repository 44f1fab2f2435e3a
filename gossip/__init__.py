"""Membership (SWIM failure detection) and load dissemination, sans-IO.

No trio, sockets, clocks or global randomness in this package: see
docs/membership.md.
"""

from gossip.config import GossipConfig
from gossip.membership import (
    Action,
    Load,
    Member,
    MemberChanged,
    MemberForgotten,
    Membership,
    MemberState,
    PersistIncarnation,
    Send,
)
from gossip.wire import ProtocolError

__all__ = [
    "Action",
    "GossipConfig",
    "Load",
    "Member",
    "MemberChanged",
    "MemberForgotten",
    "MemberState",
    "Membership",
    "PersistIncarnation",
    "ProtocolError",
    "Send",
]
