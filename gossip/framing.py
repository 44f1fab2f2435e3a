"""Framing of the peer links: a 4-byte big-endian length, then that many bytes
of CBOR (gossip/codec.py).

:class:`FrameDecoder` is sans-IO (h11 style): feed it bytes, get whole
payloads back; it refuses a declared length above its bound as soon as the
header is seen, so it never buffers more than ``max_frame_bytes + 4`` bytes.
Apart from the codec because the authenticated links (gossip/auth.py) frame
differently and share only the header's size.
"""

from __future__ import annotations

import struct

from gossip.codec import ProtocolError

__all__ = ["FRAME_HEADER_BYTES", "frame", "FrameDecoder"]

FRAME_HEADER_BYTES = 4
_FRAME_HEADER = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    """Length-prefix ``payload`` (4-byte big-endian length, then the bytes)."""
    if not payload:
        raise ValueError("refusing to frame an empty payload (the decoder rejects zero-length frames)")
    return _FRAME_HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Sans-IO frame splitter.  ``feed`` returns the complete payloads found so
    far.  A zero or oversize declared length raises :class:`ProtocolError` at
    once; after that the decoder stays broken (the link must be dropped)."""

    __slots__ = ("max_frame_bytes", "_header", "_body", "_need", "_error")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._header = bytearray()
        self._body = bytearray()
        self._need: int | None = None  # body length once the header is complete
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._header) + len(self._body)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._need is None:
                take = min(FRAME_HEADER_BYTES - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) < FRAME_HEADER_BYTES:
                    break
                (length,) = _FRAME_HEADER.unpack(self._header)
                self._header.clear()
                if length == 0 or length > self.max_frame_bytes:
                    self._error = ProtocolError(
                        "zero-length frame" if length == 0
                        else f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}"
                    )
                    raise self._error
                self._need = length
            need = self._need - len(self._body)
            if not self._body and end - pos >= need:
                # Whole body already in hand: slice without copying twice.
                out.append(bytes(view[pos : pos + need]))
                pos += need
                self._need = None
                continue
            take = min(need, end - pos)
            self._body += view[pos : pos + take]
            pos += take
            if len(self._body) == self._need:
                out.append(bytes(self._body))
                self._body.clear()
                self._need = None
        return out
