"""The opening lines of a peer link (gossip/hello.py): the hello line, the
acceptor's verdict, and the instance book that tells a restart from a second
peer under the same name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip import wire
from gossip.wire import ProtocolError, hello_line, parse_hello


# ---------------------------------------------------------------------------
# Hello line
# ---------------------------------------------------------------------------


def test_hello_line_round_trip():
    line = hello_line("n1", 3, "127.0.0.1:7001")
    assert line == b"PEERJOBS-PEER/1 n1 3 127.0.0.1:7001\n"
    assert line.startswith(wire.HELLO_PREFIX)
    assert parse_hello(line) == ("n1", 3, "127.0.0.1:7001")
    assert parse_hello(line.rstrip(b"\n") + b"\r\n") == ("n1", 3, "127.0.0.1:7001")
    assert parse_hello(b"PEERJOBS-PEER/1 a-b_c.d 0 [::1]:9\n") == ("a-b_c.d", 0, "[::1]:9")


@pytest.mark.parametrize(
    "line",
    [
        b"PEERJOBS-PEER/2 n1 3 127.0.0.1:7001\n",  # other version
        b"PEERJOBS-PEER/1 n1 3\n",
        b"PEERJOBS-PEER/1 n1 -3 127.0.0.1:7001\n",
        b"PEERJOBS-PEER/1 n1 x 127.0.0.1:7001\n",
        b"PEERJOBS-PEER/1 n1 3 127.0.0.1\n",
        b"PEERJOBS-PEER/1 n1 3 127.0.0.1:0\n",
        b"PEERJOBS-PEER/1 n1 3 127.0.0.1:70000\n",
        b"PEERJOBS-PEER/1 n\xff 3 127.0.0.1:7001\n",
        b"PEERJOBS-PEER/1  n1 3 127.0.0.1:7001\n",
        b"SUBMIT echo hi\n",
        b"PEERJOBS-PEER/1 " + b"a" * 600 + b" 1 h:1\n",
    ],
)
def test_bad_hello_lines(line):
    with pytest.raises(ProtocolError):
        parse_hello(line)


@given(st.binary(max_size=80))
def test_parse_hello_only_raises_protocol_error(tail):
    try:
        parse_hello(wire.HELLO_PREFIX + tail)
    except ProtocolError:
        pass


# ---------------------------------------------------------------------------
# Two peers with one name (issue 11, case 11): the hello's instance id
# ---------------------------------------------------------------------------


A, B, C = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"


def test_instance_book_refuses_a_second_data_directory_under_a_live_id():
    book = wire.InstanceBook("n2", C, entries_max=4)
    alive_at_1 = (True, "h:1", 1)
    assert book.judge("n1", A, "h:1", 1, alive_at_1) is None  # first hello: learnt
    assert book.get("n1") == A
    conflict = book.judge("n1", B, "h:9", 1, alive_at_1)  # another data directory, n1 alive
    assert conflict is not None and "n1" in conflict and "--name" in conflict
    assert book.get("n1") == A  # the refused one changes nothing
    assert book.judge("n1", B, "h:9", 5, (True, "h:1", 1)) is not None  # whatever its incarnation
    assert book.judge("n1", A, "h:7", 2, alive_at_1) is None  # a restart at a new address: welcome
    assert book.judge("n1", B, "h:9", 1, (False, "h:7", 2)) is None  # n1 dead: its replacement is welcome
    assert book.get("n1") == B


def test_instance_book_own_id_and_unknown_instances():
    book = wire.InstanceBook("n1", A, entries_max=2)
    assert book.judge("n1", A, "h:1", 1, None) is None  # ourselves (a link to our own address)
    assert "in use by the very peer" in book.judge("n1", B, "h:2", 1, None)
    assert book.judge("n1", None, "h:2", 1, None) is None  # a hello without an instance (a tool)
    # Known only by gossip: a fresh directory elsewhere at an incarnation not
    # above the member's is a second peer; a restart comes with a higher one.
    assert book.judge("n3", B, "h:9", 1, (True, "h:3", 1)) is not None
    assert book.judge("n3", B, "h:9", 2, (True, "h:3", 1)) is None
    for i in range(5):  # bounded
        book.learn(f"x{i}", C)
    assert len(book._book) == 2
    book.learn("x4", A, replace=False)
    assert book.get("x4") == C


def test_verdict_lines_round_trip_and_a_conflict_is_not_a_protocol_error():
    assert wire.parse_verdict(wire.verdict_ok("n1", A)) == ("n1", A)
    line = wire.verdict_conflict("peer id n1 is in use\r\nSUBMIT rm -rf /" + "x" * 1000)
    assert len(line) <= wire.VERDICT_LINE_BYTES_MAX and line.count(b"\n") == 1
    with pytest.raises(wire.NameConflict) as caught:
        wire.parse_verdict(line)
    assert not isinstance(caught.value, wire.ProtocolError) and "in use" in str(caught.value)
    for bad in (b"ERR auth-failed\n", b"ERR too-many-connections x\n", b"OK n1\n", b"OK n1 XYZ\n", b"\n"):
        with pytest.raises(wire.ProtocolError):
            wire.parse_verdict(bad)
    hello = wire.hello_line("n1", 3, "127.0.0.1:7001", A)
    assert wire.parse_hello_full(hello) == ("n1", 3, "127.0.0.1:7001", A)
    assert wire.parse_hello(hello) == ("n1", 3, "127.0.0.1:7001")
    assert wire.parse_hello_full(wire.hello_line("n1", 3, "127.0.0.1:7001"))[3] is None
    with pytest.raises(wire.ProtocolError):
        wire.parse_hello_full(b"PEERJOBS-PEER/1 n1 3 127.0.0.1:7001 NOT-HEX\n")


def test_a_conflict_verdict_under_a_secret_is_sealed_and_cannot_be_forged():
    from gossip import auth

    secret = b"s" * 32
    hello = wire.hello_line("n1", 1, "h:1", B)
    init = auth.Initiator(secret, hello, b"i" * 32)
    acc = auth.Acceptor(secret, hello, b"a" * 32)
    proof = init.feed(acc.feed(init.start()[len(hello):]))
    acc.feed(proof)
    assert init.done and acc.done
    sealed = acc.seal_verdict(wire.verdict_conflict("peer id n1 is in use"))
    with pytest.raises(wire.NameConflict):
        wire.parse_verdict(init.open_verdict(sealed))
    assert wire.parse_verdict(init.open_verdict(acc.seal_verdict(wire.verdict_ok("n2", A)))) == ("n2", A)
    for forged in (wire.verdict_conflict("peer id n1 is in use"),  # unsealed
                   b"0" * 64 + b" " + wire.verdict_conflict("x"),  # a wrong MAC
                   sealed.replace(b"in use", b"in USE")):  # altered
        with pytest.raises(auth.AuthError):
            init.open_verdict(forged)
