"""The peer-to-peer wire format, as one import: the CBOR codec, the framing and
the link's opening lines.

The code lives in three modules by concern — gossip/codec.py (the ``@message``
registry, ``encode``/``decode`` with type checks), gossip/framing.py
(``frame``/``FrameDecoder``) and gossip/hello.py (hello line, verdict,
``InstanceBook``) — and this module re-exports their public names, so that
``from gossip import wire`` / ``wire.encode`` keeps working for the edges, the
simulation and the tests.
"""

from __future__ import annotations

from gossip import codec, framing, hello
from gossip.codec import CBOR_DEPTH_MAX, PROTOCOL_VERSION, ProtocolError, decode, encode, message, registered_tags
from gossip.framing import FRAME_HEADER_BYTES, FrameDecoder, frame
from gossip.hello import (HELLO_LINE_BYTES_MAX, HELLO_PREFIX, PEER_ID_BYTES_MAX, VERDICT_LINE_BYTES_MAX, InstanceBook,
                          NameConflict, hello_line, parse_hello, parse_hello_full, parse_verdict, verdict_conflict,
                          verdict_ok)

# Every public name of the three, and only those (each module's __all__ is
# the one list of what it offers).
__all__ = [*codec.__all__, *framing.__all__, *hello.__all__]
