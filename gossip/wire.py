"""The peer-to-peer wire format: one codec for every message between peers.

Theory of operation
-------------------
Every message is a frozen, slotted dataclass registered under a short string tag
with :func:`message`.  :func:`encode` turns an instance into the CBOR of
``[PROTOCOL_VERSION, tag, [field values in declaration order]]``; a nested
message travels as its own ``[tag, [fields]]`` list.  :func:`decode` is the
inverse and trusts nothing: it checks the version, the tag, the field count and
the type of every field against the class's annotations, and turns any failure
into :class:`ProtocolError` (a misbehaving peer), never an ``AssertionError`` or
a stray ``KeyError``/``TypeError``.

The per-class field checkers are built once, lazily, from
``typing.get_type_hints`` (lazily so that classes may use forward references and
live in any module, e.g. the executor's own steal and handoff messages).

Supported annotations: ``int``, ``float`` (an ``int`` is accepted and widened),
``str``, ``bytes``, ``bool``, ``None``, enums (sent as their value), registered
message classes, ``X | None`` / ``Optional[X]`` and other unions of those,
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]`` and ``dict[str, X]``.
``bool`` is never accepted where ``int`` is required, nor the reverse.

Framing: a frame is a 4-byte big-endian length followed by that many bytes of
CBOR.  :class:`FrameDecoder` is sans-IO (h11 style): feed it bytes, get whole
payloads back; it refuses a declared length above its bound as soon as the
header is seen, so it never buffers more than ``max_frame_bytes + 4`` bytes.

Peers connect to the same TCP port as text clients, so a peer link opens with a
hello line (:func:`hello_line` / :func:`parse_hello`) before its first frame.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import re
import struct
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

__all__ = [
    "PROTOCOL_VERSION",
    "HELLO_PREFIX",
    "HELLO_LINE_BYTES_MAX",
    "FRAME_HEADER_BYTES",
    "ProtocolError",
    "message",
    "registered_tags",
    "encode",
    "decode",
    "frame",
    "FrameDecoder",
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

PROTOCOL_VERSION = 1

# Messages nest at most a few levels (message → tuple → member update → load).
# CBOR from a remote could nest thousands of levels and blow the C stack or the
# recursion limit; 32 is far above anything we send and far below any danger.
CBOR_DEPTH_MAX = 32

FRAME_HEADER_BYTES = 4
_FRAME_HEADER = struct.Struct(">I")

HELLO_PREFIX = b"PEERJOBS-PEER/"
# A hello line is "PEERJOBS-PEER/<v> <id> <incarnation> <host:port>\n": with a
# 64-byte id and a 255-byte host name it stays under 400 bytes; 512 leaves room
# and bounds what the edge reads before it knows who is talking.
HELLO_LINE_BYTES_MAX = 512
PEER_ID_BYTES_MAX = 64
_PEER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ADDR_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,255}):([0-9]{1,5})")
_INSTANCE_RE = re.compile(r"[0-9a-f]{8,32}")


class ProtocolError(Exception):
    """The remote sent bytes we cannot accept (bad CBOR, unknown tag, wrong
    field types, oversize frame, bad hello).  The edge should count it and drop
    the link; it is never our own bug."""


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

_CLASS_BY_TAG: dict[str, type] = {}
_TAG_BY_CLASS: dict[type, str] = {}
# cls -> tuple of (field name, checker); built on first use.
_SCHEMA: dict[type, tuple[tuple[str, Callable[[Any], Any]], ...]] = {}


def message(tag: str) -> Callable[[type], type]:
    """Register a frozen, slotted dataclass under ``tag``.

    Apply it on top of ``@dataclass(frozen=True, slots=True)``.  Tags are short
    (they are on every message) and unique across the whole program; a
    duplicate is a programming error and raises at import time.
    """
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"message tag must be a non-empty str, got {tag!r}")

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@message({tag!r}) must be applied to a dataclass (put it above @dataclass)")
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        if not params.frozen or "__slots__" not in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: messages must be @dataclass(frozen=True, slots=True)")
        if any(not f.init for f in dataclasses.fields(cls)):
            raise TypeError(f"{cls.__qualname__}: every message field must be an __init__ field")
        existing = _CLASS_BY_TAG.get(tag)
        if existing is not None and existing is not cls:
            raise ValueError(f"message tag {tag!r} already registered by {existing.__qualname__}")
        _CLASS_BY_TAG[tag] = cls
        _TAG_BY_CLASS[cls] = tag
        return cls

    return register


def registered_tags() -> dict[str, type]:
    """A copy of the registry, tag → class (for diagnostics and tests)."""
    return dict(_CLASS_BY_TAG)


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = (int, float, str, bytes, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        _FIELD_NAMES[cls] = names
    return names


def _plain(value: Any) -> Any:
    """Turn a field value into plain CBOR-able data (nested messages become
    ``[tag, [fields]]``).  Plain recursion is about twice as fast as cbor2's
    ``default`` callback for our small nested messages."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    tag = _TAG_BY_CLASS.get(kind)
    if tag is not None:
        return [tag, [_plain(getattr(value, name)) for name in _field_names(kind)]]
    if isinstance(value, enum.Enum):
        return value.value
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(f"cannot encode {kind.__qualname__} on the peer wire (not a registered message)")


def encode(msg: Any) -> bytes:
    """CBOR of ``[PROTOCOL_VERSION, tag, [field values]]``.  Encoding an
    unregistered object is our bug and raises ``TypeError``."""
    tag = _TAG_BY_CLASS.get(type(msg))
    if tag is None:
        raise TypeError(f"cannot encode {type(msg).__qualname__}: not a registered message")
    fields = [_plain(getattr(msg, name)) for name in _field_names(type(msg))]
    return cbor2.dumps([PROTOCOL_VERSION, tag, fields])


# --------------------------------------------------------------------------
# Decoding and validation
# --------------------------------------------------------------------------


def decode(data: bytes) -> Any:
    """Decode one message; any fault in ``data`` raises :class:`ProtocolError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    fp = io.BytesIO(data)
    try:
        raw = cbor2.CBORDecoder(fp, max_depth=CBOR_DEPTH_MAX).decode()
    except Exception as exc:  # cbor2 raises several kinds; all mean "bad bytes".
        raise ProtocolError(f"bad CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise ProtocolError(f"{len(data) - fp.tell()} trailing bytes after the message")
    if type(raw) is not list or len(raw) != 3:
        raise ProtocolError("a message must be a 3-element array [version, tag, fields]")
    version, tag, fields = raw
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(f"unsupported protocol version {version!r} (we speak {PROTOCOL_VERSION})")
    return _build(tag, fields, "")


def _build(tag: Any, fields: Any, path: str) -> Any:
    if type(tag) is not str:
        raise ProtocolError(f"{path or 'message'}: tag must be a string, got {type(tag).__name__}")
    cls = _CLASS_BY_TAG.get(tag)
    if cls is None:
        raise ProtocolError(f"{path or 'message'}: unknown message tag {tag!r}")
    if type(fields) is not list:
        raise ProtocolError(f"{tag}: fields must be an array")
    schema = _schema(cls)
    if len(fields) != len(schema):
        raise ProtocolError(f"{tag}: expected {len(schema)} fields, got {len(fields)}")
    values = []
    for (name, check), value in zip(schema, fields):
        try:
            values.append(check(value))
        except _Mismatch as exc:
            raise ProtocolError(f"{tag}.{name}: {exc}") from None
    try:
        return cls(*values)
    except ProtocolError:
        raise
    except (ValueError, TypeError) as exc:
        # A message class may validate itself in __post_init__.
        raise ProtocolError(f"{tag}: rejected by {cls.__qualname__}: {exc}") from None


class _Mismatch(Exception):
    """Internal: a value does not fit its annotation (becomes ProtocolError)."""


def _schema(cls: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    schema = _SCHEMA.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = tuple((f.name, _checker(hints[f.name])) for f in dataclasses.fields(cls))
        _SCHEMA[cls] = schema
    return schema


def _exact(kind: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) is not kind:
            raise _Mismatch(f"expected {kind.__name__}, got {type(v).__name__}")
        return v

    return check


def _check_float(v: Any) -> float:
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise _Mismatch(f"expected float, got {t.__name__}")


def _check_none(v: Any) -> None:
    if v is not None:
        raise _Mismatch(f"expected null, got {type(v).__name__}")
    return None


def _checker(annotation: Any) -> Callable[[Any], Any]:
    """Build a function that validates (and converts) one decoded CBOR value."""
    if annotation is int or annotation is str or annotation is bytes or annotation is bool:
        return _exact(annotation)
    if annotation is float:
        return _check_float
    if annotation is None or annotation is type(None):
        return _check_none
    if annotation is typing.Any:
        return lambda v: v
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum_checker(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _nested_checker(annotation)

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return _union_checker(tuple(_checker(a) for a in args), annotation)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence_checker(_checker(args[0]), tuple)
        if not args:
            return _sequence_checker(lambda v: v, tuple)
        return _fixed_tuple_checker(tuple(_checker(a) for a in args))
    if origin is list:
        return _sequence_checker(_checker(args[0]) if args else (lambda v: v), list)
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"wire dicts must have str keys, not {annotation!r}")
        return _dict_checker(_checker(args[1]) if args else (lambda v: v))
    raise TypeError(f"unsupported annotation on the peer wire: {annotation!r}")


def _enum_checker(kind: type[enum.Enum]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) not in (str, int):
            raise _Mismatch(f"expected a {kind.__name__} value, got {type(v).__name__}")
        try:
            return kind(v)
        except ValueError:
            raise _Mismatch(f"{v!r} is not a valid {kind.__name__}") from None

    return check


def _nested_checker(cls: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) is not list or len(v) != 2:
            raise _Mismatch(f"expected a nested {cls.__name__} as [tag, fields]")
        try:
            built = _build(v[0], v[1], cls.__name__)
        except ProtocolError as exc:
            raise _Mismatch(str(exc)) from None
        if not isinstance(built, cls):
            raise _Mismatch(f"expected {cls.__name__}, got {type(built).__name__}")
        return built

    return check


def _union_checker(options: tuple[Callable[[Any], Any], ...], annotation: Any) -> Callable[[Any], Any]:
    # Fast path for the very common Optional[X].
    if len(options) == 2 and _check_none in options:
        other = options[0] if options[1] is _check_none else options[1]

        def check_optional(v: Any) -> Any:
            return None if v is None else other(v)

        return check_optional

    def check(v: Any) -> Any:
        for option in options:
            try:
                return option(v)
            except _Mismatch:
                continue
        raise _Mismatch(f"{type(v).__name__} value does not match {annotation!r}")

    return check


def _sequence_checker(item: Callable[[Any], Any], kind: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) is not list:
            raise _Mismatch(f"expected an array, got {type(v).__name__}")
        return kind([item(x) for x in v])

    return check


def _fixed_tuple_checker(items: tuple[Callable[[Any], Any], ...]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) is not list or len(v) != len(items):
            raise _Mismatch(f"expected an array of {len(items)} items")
        return tuple(f(x) for f, x in zip(items, v))

    return check


def _dict_checker(value: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) is not dict:
            raise _Mismatch(f"expected a map, got {type(v).__name__}")
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise _Mismatch("map keys must be strings")
            out[k] = value(x)
        return out

    return check


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


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
