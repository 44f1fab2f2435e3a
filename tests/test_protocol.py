"""The text protocol's parser and line splitter: total on any bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from executor.protocol import (
    Cancel,
    ClientError,
    Help,
    LineSplitter,
    ListJobs,
    Peers,
    Quit,
    Result,
    Status,
    Submit,
    Wait,
    parse_command,
)

LIMITS = dict(command_bytes_max=100, timeout_max_s=1000.0, wait_max_s=60.0, list_max=50)


def parse(line: bytes):
    return parse_command(line, **LIMITS)


def test_commands():
    assert parse(b"SUBMIT echo hi").spec.command == "echo hi"
    s = parse(b"submit --timeout 2.5 sleep 1").spec
    assert (s.command, s.timeout_s) == ("sleep 1", 2.5)
    assert parse(b"250").spec.sleep_ms == 250 and parse(b"250").spec.kind == "sleep"
    assert parse(b"STATUS n1-4") == Status("n1-4")
    assert parse(b"RESULT my-host.7001-12") == Result("my-host.7001-12")
    assert parse(b"rn1-4") == Result("n1-4")
    assert parse(b"r n1-4") == Result("n1-4")
    assert parse(b"WAIT n1-4") == Wait("n1-4", None)
    assert parse(b"WAIT n1-4 2") == Wait("n1-4", 2.0)
    assert parse(b"CANCEL n1-4") == Cancel("n1-4")
    assert parse(b"LIST") == ListJobs(20)
    assert parse(b"LIST 5") == ListJobs(5)
    assert parse(b"PEERS") == Peers() and parse(b"HELP") == Help() and parse(b"QUIT") == Quit()


def err_code(line: bytes) -> str:
    try:
        parse(line)
    except ClientError as exc:
        return exc.code
    raise AssertionError(f"{line!r} parsed")


def test_errors_name_what_is_wrong():
    assert err_code(b"FROB x") == "unknown-command"
    assert err_code(b"") == "bad-request"
    assert err_code(b"SUBMIT") == "bad-request"
    assert err_code(b"SUBMIT " + b"x" * 101) == "command-too-long"
    assert err_code(b"SUBMIT --timeout -1 ls") == "bad-request"
    assert err_code(b"SUBMIT --timeout nan ls") == "bad-request"
    assert err_code(b"SUBMIT --timeout 5000 ls") == "bad-request"
    assert err_code(b"STATUS") == "bad-request"
    assert err_code(b"STATUS ../etc") == "bad-id"
    assert err_code(b"WAIT n1-1 100") == "bad-request"
    assert err_code(b"LIST 0") == "bad-request"
    assert err_code(b"LIST 51") == "bad-request"
    assert err_code(b"HELP me") == "bad-request"
    assert err_code(b"\xff\xfe") == "encoding"
    assert err_code(b"SUBMIT a\x00b") == "bad-request"
    assert err_code(b"9" * 20) == "bad-request"


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_parser_never_raises_anything_but_client_error(line):
    try:
        command = parse(line)
    except ClientError as exc:
        assert exc.reply().startswith(b"ERR ") and exc.reply().endswith(b"\n")
        assert b"\n" not in exc.reply()[:-1]
    else:
        assert isinstance(command, (Submit, Status, Result, Wait, Cancel, ListJobs, Peers, Help, Quit))


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=10), st.data())
def test_splitter_finds_every_line_however_the_stream_is_cut(lines, data):
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    splitter = LineSplitter(line_bytes_max=1000)
    out = []
    prev = 0
    for cut in cuts + [len(stream)]:
        out += splitter.feed(stream[prev:cut])
        prev = cut
    assert out == [line[:-1] if line.endswith(b"\r") else line for line in lines]


@given(st.binary(max_size=3000), st.integers(1, 200))
def test_splitter_memory_is_bounded_and_long_lines_are_reported(stream, chunk):
    splitter = LineSplitter(line_bytes_max=64)
    for i in range(0, len(stream), chunk):
        for line in splitter.feed(stream[i : i + chunk]):
            assert line is LineSplitter.TOO_LONG or len(line) <= 64
        assert splitter.pending_bytes <= 64


def test_long_line_reported_once_then_stream_recovers():
    splitter = LineSplitter(line_bytes_max=10)
    out = splitter.feed(b"x" * 25) + splitter.feed(b"y" * 25 + b"\nHELP\n")
    assert out == [LineSplitter.TOO_LONG, b"HELP"]
