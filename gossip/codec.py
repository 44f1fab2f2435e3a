"""The CBOR codec for every message between peers: the ``@message`` registry,
``encode`` and a ``decode`` that trusts nothing.

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

Kept apart from the framing (gossip/framing.py) and the link's opening lines
(gossip/hello.py) because it is the one piece every peer message goes through:
the executor's job messages register here too.  ``gossip/wire.py`` re-exports
all three.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

__all__ = [
    "PROTOCOL_VERSION",
    "CBOR_DEPTH_MAX",
    "ProtocolError",
    "message",
    "registered_tags",
    "encode",
    "decode",
]

PROTOCOL_VERSION = 1

# Messages nest at most a few levels (message → tuple → member update → load).
# CBOR from a remote could nest thousands of levels and blow the C stack or the
# recursion limit; 32 is far above anything we send and far below any danger.
CBOR_DEPTH_MAX = 32


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
