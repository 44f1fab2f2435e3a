"""The opening lines of a peer link: the hello, the acceptor's verdict on it,
and the book of which data directory (instance) each peer id belongs to.

Peers connect to the same TCP port as text clients, so a peer link opens with a
hello line (:func:`hello_line` / :func:`parse_hello`) before its first frame;
the acceptor answers with a verdict line (:func:`verdict_ok`,
:func:`verdict_conflict`, :func:`parse_verdict`), judged by an
:class:`InstanceBook`.  Lines, not CBOR: they are read before the reader knows
it talks to a peer at all.  Sans-IO like the codec it sits beside.
"""

from __future__ import annotations

import re

from gossip.codec import PROTOCOL_VERSION, ProtocolError

__all__ = [
    "HELLO_PREFIX",
    "HELLO_LINE_BYTES_MAX",
    "PEER_ID_BYTES_MAX",
    "hello_line",
    "parse_hello",
    "parse_hello_full",
    "VERDICT_LINE_BYTES_MAX",
    "NameConflict",
    "verdict_ok",
    "verdict_conflict",
    "parse_verdict",
    "InstanceBook",
]

HELLO_PREFIX = b"PEERJOBS-PEER/"
# A hello line is "PEERJOBS-PEER/<v> <id> <incarnation> <host:port>\n": with a
# 64-byte id and a 255-byte host name it stays under 400 bytes; 512 leaves room
# and bounds what the edge reads before it knows who is talking.
HELLO_LINE_BYTES_MAX = 512
PEER_ID_BYTES_MAX = 64
_PEER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ADDR_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,255}):([0-9]{1,5})")
_INSTANCE_RE = re.compile(r"[0-9a-f]{8,32}")


# --------------------------------------------------------------------------
# Hello line
# --------------------------------------------------------------------------


def _check_addr(addr: str) -> bool:
    m = _ADDR_RE.fullmatch(addr)
    return m is not None and 0 < int(m.group(2)) <= 65535


def hello_line(peer_id: str, incarnation: int, addr: str, instance: str | None = None) -> bytes:
    """``b"PEERJOBS-PEER/1 <peer_id> <incarnation> <host:port> [<instance>]\\n"``.

    ``instance`` is the random id of the peer's data directory (storage/layout.py
    ``m/instance``): it tells a restart of a peer (same instance, maybe a new
    address) from another peer started under the same name."""
    if not _PEER_ID_RE.fullmatch(peer_id):
        raise ValueError(f"bad peer id {peer_id!r}")
    if type(incarnation) is not int or incarnation < 0:
        raise ValueError(f"bad incarnation {incarnation!r}")
    if not _check_addr(addr):
        raise ValueError(f"bad address {addr!r} (want host:port)")
    if instance is not None and not _INSTANCE_RE.fullmatch(instance):
        raise ValueError(f"bad instance id {instance!r}")
    tail = f" {instance}" if instance is not None else ""
    return HELLO_PREFIX + f"{PROTOCOL_VERSION} {peer_id} {incarnation} {addr}{tail}\n".encode("ascii")


def parse_hello(line: bytes) -> tuple[str, int, str]:
    """Parse a hello line (with or without its ``\\n`` / ``\\r\\n``) into
    ``(peer_id, incarnation, addr)``; anything else raises ProtocolError."""
    return parse_hello_full(line)[:3]


def parse_hello_full(line: bytes) -> tuple[str, int, str, str | None]:
    """``parse_hello`` plus the instance id (None from a hello without one:
    an older peer, or a tool)."""
    if not isinstance(line, (bytes, bytearray)):
        raise ProtocolError("hello line must be bytes")
    if len(line) > HELLO_LINE_BYTES_MAX:
        raise ProtocolError(f"hello line longer than {HELLO_LINE_BYTES_MAX} bytes")
    if not line.startswith(HELLO_PREFIX):
        raise ProtocolError("not a peer hello line")
    body = bytes(line[len(HELLO_PREFIX) :])
    if body.endswith(b"\n"):
        body = body[:-1]
        if body.endswith(b"\r"):
            body = body[:-1]
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("hello line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) not in (4, 5):
        raise ProtocolError("hello line must be 'PEERJOBS-PEER/<version> <id> <incarnation> <host:port> [<instance>]'")
    version, peer_id, incarnation, addr = parts[:4]
    instance = parts[4] if len(parts) == 5 else None
    if not version.isdigit() or int(version) != PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {version!r}, we speak {PROTOCOL_VERSION}")
    if not _PEER_ID_RE.fullmatch(peer_id):
        raise ProtocolError(f"bad peer id in hello: {peer_id!r}")
    if not incarnation.isdigit() or len(incarnation) > 20:
        raise ProtocolError(f"bad incarnation in hello: {incarnation!r}")
    if not _check_addr(addr):
        raise ProtocolError(f"bad address in hello: {addr!r}")
    if instance is not None and not _INSTANCE_RE.fullmatch(instance):
        raise ProtocolError(f"bad instance id in hello: {instance[:40]!r}")
    return peer_id, int(incarnation), addr, instance


# --------------------------------------------------------------------------
# The acceptor's verdict on a hello
# --------------------------------------------------------------------------
#
# After the hello (and, with a cluster secret, after the authentication of
# gossip/auth.py, which then seals the verdict), the acceptor answers one line
# before the initiator sends any frame:
#
#     OK <acceptor id> <acceptor instance>\n
#     ERR name-conflict <what and what to do>\n
#
# Anything else (``ERR auth-failed``, ``ERR too-many-connections ...``) is a
# refused link, retried later like any broken link. ``name-conflict`` is not:
# it means this very peer uses an id that another live peer of the cluster
# has, and the peer told so must stop (docs/membership.md, name conflicts).

VERDICT_LINE_BYTES_MAX = 400
"""Longest verdict line (a conflict's explanation names two ids, two
instances and two addresses; ``verdict_conflict`` cuts it to fit)."""
_VERDICT_OK = b"OK "
_VERDICT_CONFLICT = b"ERR name-conflict "


class NameConflict(Exception):
    """The other side refused this peer's hello: another live peer of the
    cluster has the same id and another data directory. Fatal for the peer
    it is raised in (not a ProtocolError: it must not be absorbed as one
    broken link)."""


def verdict_ok(peer_id: str, instance: str) -> bytes:
    return _VERDICT_OK + f"{peer_id} {instance}\n".encode("ascii")


def verdict_conflict(text: str) -> bytes:
    room = VERDICT_LINE_BYTES_MAX - len(_VERDICT_CONFLICT) - 1
    clean = "".join(c if " " <= c < "\x7f" else "?" for c in text)[:room]
    return _VERDICT_CONFLICT + clean.encode("ascii") + b"\n"


def parse_verdict(line: bytes) -> tuple[str, str]:
    """``(acceptor id, acceptor instance)`` from an OK verdict; raises
    NameConflict for a name-conflict verdict and ProtocolError for anything
    else."""
    line = bytes(line).rstrip(b"\n").rstrip(b"\r")
    if line.startswith(_VERDICT_CONFLICT):
        raise NameConflict(line[len(_VERDICT_CONFLICT):].decode("ascii", "replace"))
    if not line.startswith(_VERDICT_OK):
        raise ProtocolError(f"link refused: {line[:120].decode('ascii', 'replace')}")
    words = line[len(_VERDICT_OK):].decode("ascii", "replace").split(" ")
    if len(words) != 2 or not _PEER_ID_RE.fullmatch(words[0]) or not _INSTANCE_RE.fullmatch(words[1]):
        raise ProtocolError(f"malformed verdict: {line[:120]!r}")
    return words[0], words[1]


class InstanceBook:
    """Which instance (data directory) each peer id belongs to, as hellos and
    verdicts told us; sans-IO. `judge` decides whether a hello may open a
    link; the edge passes what membership knows of the id.

    Theory: a peer id names one data directory. A restart keeps it (same
    instance, maybe another address: welcome). Another data directory under
    a live member's id is a second peer that would merge into the first: it
    is refused, and told so (`NameConflict` on its side). A member that is
    dead may come back with another instance (its data directory was
    replaced): accepted, the book is updated. Without a remembered instance
    (the id known only by gossip so far), a hello from another address than
    the live member's, at an incarnation not above it, is the same conflict:
    a restart always comes with a higher incarnation (synced at every start),
    a fresh data directory starts at 1. Bounded by ``entries_max`` (the
    oldest entry goes first)."""

    def __init__(self, self_id: str, self_instance: str, entries_max: int) -> None:
        self.self_id = self_id
        self.self_instance = self_instance
        self.entries_max = entries_max
        self._book: dict[str, str] = {}

    def get(self, peer_id: str) -> str | None:
        return self._book.get(peer_id)

    def judge(self, peer_id: str, instance: str | None, addr: str, incarnation: int,
              member: tuple[bool, str, int] | None) -> str | None:
        """None = accept (and remember the instance); else the conflict, in
        words for both logs. ``member``: (alive or suspect, address,
        incarnation) as membership has the id, or None if it does not."""
        if instance is None:
            return None  # an older peer or a tool: nothing to judge by
        if peer_id == self.self_id:
            if instance == self.self_instance:
                return None
            return (f"peer id {peer_id} is in use by the very peer this one contacted (instance "
                    f"{self.self_instance}); this one at {addr} (instance {instance}) has another data directory: "
                    f"start it with another --name and its own --data, or stop the other one first")
        known = self._book.get(peer_id)
        if known == instance:
            return None
        live = member is not None and member[0]
        if live and (known is not None or (member[1] != addr and incarnation <= member[2])):
            where = member[1]
            return (f"peer id {peer_id} is in use by a live peer at {where} (instance {known or 'unknown'}); "
                    f"this one at {addr} (instance {instance}) has another data directory: start it with another "
                    f"--name and its own --data, or stop the other one first and wait until it is seen dead")
        self.learn(peer_id, instance)
        return None

    def learn(self, peer_id: str, instance: str, replace: bool = True) -> None:
        if peer_id == self.self_id or (not replace and peer_id in self._book):
            return
        self._book.pop(peer_id, None)
        if len(self._book) >= self.entries_max:
            del self._book[next(iter(self._book))]
        self._book[peer_id] = instance
