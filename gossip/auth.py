"""Peer authentication: a challenge–response on the cluster secret, then a MAC
on every frame. Sans-IO (h11 style): bytes in, bytes out; the nonces are
passed in by the edge (``secrets.token_bytes(NONCE_BYTES)``), so tests and
fuzzers drive it deterministically.

The exchange (after the usual hello line, docs/security.md)::

    initiator -> acceptor   PEERJOBS-PEER/1 <id> <incarnation> <host:port> <instance>\\n
                            AUTH <nonce_i: 64 hex>\\n
    acceptor  -> initiator  AUTH <nonce_a: 64 hex> <mac_a: 64 hex>\\n
    initiator -> acceptor   AUTH <mac_i: 64 hex>\\n
    acceptor  -> initiator  <mac_v: 64 hex> <verdict>\\n   (gossip/hello.py: OK ... / ERR name-conflict ...)
    initiator -> acceptor   then frames: length, payload, 16-byte tag

    transcript = len-prefixed(hello line, nonce_i, nonce_a)
    mac_a      = HMAC-SHA256(secret, "peerjobs/1 acceptor"  | transcript)
    mac_i      = HMAC-SHA256(secret, "peerjobs/1 initiator" | transcript)
    key        = HMAC-SHA256(secret, "peerjobs/1 session"   | transcript)
    mac_v      = HMAC-SHA256(secret, "peerjobs/1 verdict"   | transcript | len-prefixed(verdict))
    frame      = u32 length of (payload + tag) | payload | tag
    tag        = HMAC-SHA256(key, u64 seq | payload)[:16], seq = 0, 1, 2, ... per link

Both sides contribute a fresh nonce, so neither proof can be replayed on
another connection; the labels keep a proof of one role from being reflected
as the other; the hello line is in the transcript, so the peer id and
address a link announced are bound to the proof. Frames carry an implicit
sequence number, so a frame cannot be injected, replayed, dropped or
reordered without the next tag failing. The verdict is sealed too: a
``name-conflict`` makes the peer told so stop, so nobody without the secret
may forge one. Every comparison is
``hmac.compare_digest``. Any failure raises :class:`AuthError` (a
``ProtocolError``): the edge counts it and closes the link.

The acceptor sends its own proof before the initiator has proved anything;
that proof is a MAC over two nonces and reveals nothing about the cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from gossip.codec import ProtocolError
from gossip.framing import FRAME_HEADER_BYTES

NONCE_BYTES = 32
TAG_BYTES = 16
SECRET_BYTES_MIN = 16
AUTH_LINE_BYTES_MAX = 200
"""Longest handshake line (the acceptor's is 4 + 64 + 1 + 64 + 1 = 134 bytes)."""

_LABEL_ACCEPTOR = b"peerjobs/1 acceptor"
_LABEL_INITIATOR = b"peerjobs/1 initiator"
_LABEL_SESSION = b"peerjobs/1 session"
_LABEL_VERDICT = b"peerjobs/1 verdict"
VERDICT_MAC_HEX = 64
_SEQ = struct.Struct(">Q")
_LEN = struct.Struct(">I")


class AuthError(ProtocolError):
    """The other side does not prove it knows the cluster secret, or a frame's
    tag is wrong. The link must be closed."""


def check_secret(secret: bytes) -> bytes:
    """The secret as bytes; a short one is refused (guessable offline from
    one recorded handshake)."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < SECRET_BYTES_MIN:
        raise ValueError(f"the cluster secret must be at least {SECRET_BYTES_MIN} bytes")
    return bytes(secret)


def _transcript(hello: bytes, nonce_i: bytes, nonce_a: bytes) -> bytes:
    return b"".join(_LEN.pack(len(p)) + p for p in (hello, nonce_i, nonce_a))


def _mac(key: bytes, label: bytes, data: bytes) -> bytes:
    return hmac.new(key, label + b"\0" + data, hashlib.sha256).digest()


def _verdict_mac(secret: bytes, transcript: bytes, verdict: bytes) -> bytes:
    return _mac(secret, _LABEL_VERDICT, transcript + _LEN.pack(len(verdict)) + verdict)


def _hex(value: bytes) -> bytes:
    return value.hex().encode("ascii")


class _Lines:
    """A bounded line buffer for the handshake."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes, starts: tuple[bytes, ...] = (b"AUTH ",)) -> None:
        self.buf += data
        head = bytes(self.buf[:5])
        if head and not any(s[: len(head)] == head for s in starts):
            # Not the handshake (e.g. a frame from a peer without a secret):
            # refuse at once rather than wait for a line that will not come.
            raise AuthError("expected the authentication handshake; the other side is not a peer of this "
                            "cluster (or has no secret)")
        nl = self.buf.find(b"\n")
        if (nl < 0 and len(self.buf) > AUTH_LINE_BYTES_MAX) or nl > AUTH_LINE_BYTES_MAX:
            raise AuthError("handshake line too long")

    def line(self) -> bytes | None:
        nl = self.buf.find(b"\n")
        if nl < 0:
            return None
        line = bytes(self.buf[:nl]).rstrip(b"\r")
        del self.buf[: nl + 1]
        return line


def _words(line: bytes, count: int, what: str) -> list[bytes]:
    words = line.split(b" ")
    if len(words) != count + 1 or words[0] != b"AUTH":
        raise AuthError(f"expected {what}; the other side is not a peer of this cluster (or has no secret)")
    out = []
    for w in words[1:]:
        if len(w) != 64:
            raise AuthError(f"malformed {what}")
        try:
            out.append(bytes.fromhex(w.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            raise AuthError(f"malformed {what}") from None
    return out


class FrameSealer:
    """Frames of one direction of an authenticated link: length, payload, tag."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.seq = 0

    def seal(self, payload: bytes) -> bytes:
        if not payload:
            raise ValueError("refusing to seal an empty payload")
        tag = hmac.new(self._key, _SEQ.pack(self.seq) + payload, hashlib.sha256).digest()[:TAG_BYTES]
        self.seq += 1
        return _LEN.pack(len(payload) + TAG_BYTES) + payload + tag


class FrameOpener:
    """Checks the tags of frames from ``FrameDecoder(frame_bytes_max + TAG_BYTES)``."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.seq = 0

    def open(self, body: bytes) -> bytes:
        if len(body) <= TAG_BYTES:
            raise AuthError("frame too short to carry a tag")
        payload, tag = body[:-TAG_BYTES], body[-TAG_BYTES:]
        want = hmac.new(self._key, _SEQ.pack(self.seq) + payload, hashlib.sha256).digest()[:TAG_BYTES]
        if not hmac.compare_digest(tag, want):
            raise AuthError(f"frame {self.seq}: bad tag (injected, replayed, reordered or corrupted)")
        self.seq += 1
        return payload


class _Handshake:
    """What both sides of the challenge-response hold: the secret, the hello
    line that opened the link, this side's fresh nonce, the bounded line
    reader and, once both nonces are known, the transcript."""

    def __init__(self, secret: bytes, hello: bytes, nonce: bytes) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError("nonce must be NONCE_BYTES long")
        self._secret = check_secret(secret)
        self._hello = bytes(hello)
        self._nonce = bytes(nonce)
        self._lines = _Lines()
        self._transcript: bytes | None = None
        self.done = False


class Initiator(_Handshake):
    """The side that opened the link. ``start()`` gives the bytes to send
    first; ``feed`` the acceptor's bytes until ``done``, sending what it
    returns; then seal frames with ``sealer``."""

    def __init__(self, secret: bytes, hello: bytes, nonce: bytes) -> None:
        super().__init__(secret, hello, nonce)
        self.sealer: FrameSealer | None = None

    def start(self) -> bytes:
        return self._hello + b"AUTH " + _hex(self._nonce) + b"\n"

    def feed(self, data: bytes) -> bytes:
        if self.done:
            raise AuthError("unexpected bytes from the acceptor after the handshake")
        self._lines.feed(data, (b"AUTH ", b"ERR "))
        line = self._lines.line()
        if line is None:
            return b""
        if line.startswith(b"ERR "):
            raise AuthError(f"refused by the acceptor: {line[4:80].decode('ascii', 'replace')}")
        nonce_a, mac_a = _words(line, 2, "the acceptor's nonce and proof")
        if self._lines.buf:
            raise AuthError("unexpected bytes after the acceptor's proof")
        transcript = _transcript(self._hello, self._nonce, nonce_a)
        if not hmac.compare_digest(mac_a, _mac(self._secret, _LABEL_ACCEPTOR, transcript)):
            raise AuthError("the acceptor does not know the cluster secret")
        self.done = True
        self._transcript = transcript
        self.sealer = FrameSealer(_mac(self._secret, _LABEL_SESSION, transcript))
        return b"AUTH " + _hex(_mac(self._secret, _LABEL_INITIATOR, transcript)) + b"\n"

    def open_verdict(self, line: bytes) -> bytes:
        """The acceptor's verdict line (``<mac_v> <verdict>\\n``, after the
        handshake) without its MAC; AuthError unless the MAC is right."""
        if self._transcript is None:
            raise AuthError("verdict before the handshake is complete")
        line = bytes(line).rstrip(b"\n").rstrip(b"\r")
        mac_hex, _, verdict = line.partition(b" ")
        try:
            mac = bytes.fromhex(mac_hex.decode("ascii")) if len(mac_hex) == VERDICT_MAC_HEX else b""
        except (ValueError, UnicodeDecodeError):
            mac = b""
        if not mac or not hmac.compare_digest(mac, _verdict_mac(self._secret, self._transcript, verdict)):
            raise AuthError("the acceptor's verdict is not sealed with the cluster secret")
        return verdict + b"\n"


class Acceptor(_Handshake):
    """The side that accepted the link, after it has read the hello line.
    ``feed`` the initiator's bytes; send what it returns; once ``done``,
    ``leftover`` holds the bytes that followed the proof (the first frames)
    and ``opener`` checks every frame."""

    def __init__(self, secret: bytes, hello: bytes, nonce: bytes) -> None:
        super().__init__(secret, hello, nonce)
        self.leftover = b""
        self.opener: FrameOpener | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            raise AuthError("handshake already complete")
        self._lines.feed(data)
        out = b""
        while not self.done:
            line = self._lines.line()
            if line is None:
                break
            if self._transcript is None:
                (nonce_i,) = _words(line, 1, "the initiator's nonce")
                self._transcript = _transcript(self._hello, nonce_i, self._nonce)
                out += b"AUTH " + _hex(self._nonce) + b" " + _hex(
                    _mac(self._secret, _LABEL_ACCEPTOR, self._transcript)) + b"\n"
            else:
                (mac_i,) = _words(line, 1, "the initiator's proof")
                if not hmac.compare_digest(mac_i, _mac(self._secret, _LABEL_INITIATOR, self._transcript)):
                    raise AuthError("the initiator does not know the cluster secret")
                self.done = True
                self.opener = FrameOpener(_mac(self._secret, _LABEL_SESSION, self._transcript))
                self.leftover = bytes(self._lines.buf)
                self._lines.buf.clear()
        return out

    def seal_verdict(self, verdict: bytes) -> bytes:
        """``<mac_v> <verdict>\\n``: the verdict line the initiator checks
        with ``Initiator.open_verdict``."""
        if not self.done:
            raise ValueError("no verdict before the handshake is complete")
        verdict = bytes(verdict).rstrip(b"\n")
        return _hex(_verdict_mac(self._secret, self._transcript, verdict)) + b" " + verdict + b"\n"


__all__ = ["NONCE_BYTES", "TAG_BYTES", "FRAME_HEADER_BYTES", "AuthError", "Initiator", "Acceptor",
           "FrameSealer", "FrameOpener", "check_secret"]
