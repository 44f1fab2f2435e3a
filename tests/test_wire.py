"""The peer codec (gossip/codec.py) and the frame decoder (gossip/framing.py);
the hello line is in tests/test_hello.py."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip import wire
from gossip.membership import (
    GOSSIP_MESSAGES,
    Ack,
    Announce,
    IndirectAck,
    Load,
    MemberState,
    MemberUpdate,
    Ping,
    PingReq,
    Sync,
)
from gossip.wire import FrameDecoder, ProtocolError, decode, encode, frame, message


@message("test.inner")
@dataclass(frozen=True, slots=True)
class Inner:
    name: str
    blob: bytes


@message("test.sample")
@dataclass(frozen=True, slots=True)
class Sample:
    n: int
    x: float
    flag: bool
    maybe: int | None
    items: tuple[int, ...]
    pair: tuple[str, int]
    inner: Inner
    inners: tuple[Inner, ...]
    opt_inner: Inner | None
    attrs: dict[str, int]
    state: MemberState


ints = st.integers(-(2**63), 2**64 - 1)
small_text = st.text(max_size=20)
loads = st.builds(Load, ints, ints, ints, ints)
updates = st.builds(MemberUpdate, small_text, small_text, ints, st.sampled_from(MemberState), st.none() | loads)
update_tuples = st.lists(updates, max_size=5).map(tuple)
hdr = (small_text, small_text, ints, st.none() | loads)

gossip_messages = st.one_of(
    st.builds(Ping, ints, *hdr, small_text, update_tuples),
    st.builds(Ack, ints, *hdr, update_tuples),
    st.builds(PingReq, ints, *hdr, small_text, small_text, update_tuples),
    st.builds(IndirectAck, ints, *hdr, small_text, ints, update_tuples),
    st.builds(Announce, *hdr, update_tuples),
    st.builds(Sync, *hdr, update_tuples, st.booleans()),
)
inners = st.builds(Inner, small_text, st.binary(max_size=20))
samples = st.builds(
    Sample,
    ints,
    st.floats(allow_nan=False),
    st.booleans(),
    st.none() | ints,
    st.lists(ints, max_size=5).map(tuple),
    st.tuples(small_text, ints),
    inners,
    st.lists(inners, max_size=3).map(tuple),
    st.none() | inners,
    st.dictionaries(small_text, ints, max_size=3),
    st.sampled_from(MemberState),
)


@given(gossip_messages)
def test_gossip_messages_round_trip(msg):
    back = decode(encode(msg))
    assert back == msg and type(back) is type(msg)


def test_every_gossip_message_is_registered_and_covered():
    covered = {Ping, Ack, PingReq, IndirectAck, Announce, Sync}  # the builds() above
    assert covered == set(GOSSIP_MESSAGES)
    assert set(GOSSIP_MESSAGES) | {Load, MemberUpdate} <= set(wire.registered_tags().values())


@given(samples)
def test_sample_round_trip_with_nesting_tuples_dicts_enums(msg):
    back = decode(encode(msg))
    assert back == msg
    assert type(back.items) is tuple and type(back.inners) is tuple and type(back.pair) is tuple
    assert type(back.state) is MemberState


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


cbor_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | small_text | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(wire.registered_tags())), st.lists(cbor_values, max_size=9), st.integers(0, 2))
def test_well_formed_cbor_with_wrong_shapes_only_raises_protocol_error(tag, fields, version):
    try:
        decode(cbor2.dumps([version, tag, fields]))
    except ProtocolError:
        pass


@given(gossip_messages, st.data())
def test_corrupted_messages_only_raise_protocol_error(msg, data):
    raw = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw))
    except ProtocolError:
        pass


def test_type_checks_are_strict():
    good = Ack(1, "a", "a:1", 2, None, ())
    raw = cbor2.loads(encode(good))
    for bad_fields, why in [
        ([True, "a", "a:1", 2, None, []], "bool for int"),
        (["1", "a", "a:1", 2, None, []], "str for int"),
        ([1, "a", "a:1", 2, None], "field count"),
        ([1, "a", "a:1", 2, ["mu", []], []], "wrong nested tag"),
        ([1, "a", "a:1", 2, None, [["load", [1, 2, 3, 4]]]], "wrong item type"),
        ([1, "a", "a:1", 2, None, [["mu", ["x", "x:1", 1, "zombie", None]]]], "bad enum value"),
    ]:
        with pytest.raises(ProtocolError):
            decode(cbor2.dumps([1, raw[1], bad_fields]))
        assert why
    with pytest.raises(ProtocolError, match="version"):
        decode(cbor2.dumps([2, raw[1], raw[2]]))
    with pytest.raises(ProtocolError, match="unknown message tag"):
        decode(cbor2.dumps([1, "nope", raw[2]]))
    with pytest.raises(ProtocolError, match="trailing"):
        decode(encode(good) + b"\x00")
    big = encode(Sync("a", "a:1", 1, None, tuple(MemberUpdate(f"p{i}", "h:1", i, MemberState.ALIVE, None) for i in range(500)), True))
    with pytest.raises(ProtocolError, match="trailing"):
        decode(big + b"\x01")
    with pytest.raises(ProtocolError):
        decode(b"\x81" * 100 + b"\x00")  # deep nesting


def test_encode_rejects_unregistered_objects():
    with pytest.raises(TypeError):
        encode(object())
    with pytest.raises(TypeError):
        encode(Inner("x", object()))  # type: ignore[arg-type]


def test_registration_rules():
    with pytest.raises(ValueError):
        message("test.inner")(Sample)  # tag taken by another class

    with pytest.raises(TypeError):

        @message("test.unfrozen")
        @dataclass(slots=True)
        class Unfrozen:
            a: int


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.lists(st.integers(0, 3000), max_size=10))
def test_frame_decoder_reassembles_any_split(payloads, cuts):
    stream = b"".join(frame(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    dec = FrameDecoder(max_frame_bytes=300)
    got = []
    for chunk in chunks:
        got += dec.feed(chunk)
        assert dec.buffered_bytes <= 300 + 4
    assert got == payloads and dec.buffered_bytes == 0


def test_oversize_frame_rejected_on_header_before_buffering():
    dec = FrameDecoder(max_frame_bytes=1000)
    assert dec.feed(struct.pack(">I", 1001)[:3]) == []
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.feed(struct.pack(">I", 1001)[3:] + b"x" * 50)
    assert dec.buffered_bytes == 0
    with pytest.raises(ProtocolError):  # stays broken
        dec.feed(frame(b"ok"))
    with pytest.raises(ProtocolError, match="zero"):
        FrameDecoder(10).feed(b"\x00\x00\x00\x00")
    # A frame of exactly the limit is fine.
    assert FrameDecoder(5).feed(frame(b"12345")) == [b"12345"]
