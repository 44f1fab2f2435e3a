"""The text protocol's parser and line splitter: total on any bytes; one
definition of a job id, a number and a command's text for every door."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.core.protocol import (
    JOB_SEQ_DIGITS_MAX,
    Cancel,
    ClientError,
    ErrorCode,
    Help,
    LineSplitter,
    ListJobs,
    Peers,
    Quit,
    Result,
    Status,
    Submit,
    Wait,
    command_text_problem,
    err,
    is_job_id,
    parse_command,
    split_job_id,
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


def test_error_codes_are_data_and_the_wire_text_is_unchanged():
    assert isinstance(err_code(b"FROB x"), ErrorCode)
    assert err(ErrorCode.BUSY, "3 jobs queued here") == b"ERR busy 3 jobs queued here\n"
    assert err(ErrorCode.AUTH_FAILED, "") == b"ERR auth-failed\n"
    # Fields come right after the code, before the prose, one token each.
    line = err(ErrorCode.NOT_HOME, "job n2-1 belongs to peer n2 at 127.0.0.1:7002; ask it there",
               home="127.0.0.1:7002")
    assert line == b"ERR not-home home=127.0.0.1:7002 job n2-1 belongs to peer n2 at 127.0.0.1:7002; ask it there\n"
    exc = ClientError(ErrorCode.NOT_HOME, "job x-1 belongs to peer x; ask it there", home="-")
    assert exc.reply() == b"ERR not-home home=- job x-1 belongs to peer x; ask it there\n"


def test_client_reads_error_fields_as_data():
    from executor.client import PeerError, WaitTimeout, parse_error

    e = parse_error("ERR not-home home=127.0.0.1:7002 job n2-1 belongs to peer n2 at 127.0.0.1:7002; ask it there")
    assert (e.code, e.fields) == (ErrorCode.NOT_HOME, {"home": "127.0.0.1:7002"})
    assert e.code is ErrorCode.NOT_HOME and e.message == "job n2-1 belongs to peer n2 at 127.0.0.1:7002; ask it there"
    e = parse_error("ERR not-home home=- job x-1 belongs to peer x; ask it there")
    assert e.fields == {"home": "-"} and e.message.startswith("job x-1 ")
    # Prose is never mistaken for a field, and a code of a newer peer stays a plain str.
    e = parse_error("ERR bad-request LIST count must be 1..50")
    assert (e.code, e.fields, e.message) == (ErrorCode.BAD_REQUEST, {}, "LIST count must be 1..50")
    e = parse_error("ERR frobnicated x=1 something new")
    assert type(e.code) is str and e.code == "frobnicated" and e.fields == {"x": "1"}
    assert type(parse_error("ERR timeout job n1-1 is still running")) is WaitTimeout
    assert type(parse_error("ERR busy")) is PeerError


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


# ---------------------------------------------------------------------------
# Issue 11, case 1: numbers with thousands of digits, in every place a client
# line carries one. Each gets `ERR bad-id` / `ERR bad-request` from the one
# bounded parser (executor/core/numbers.py) and nothing else is raised.

HUGE = "9" * 5000


@pytest.mark.parametrize("line, code", [
    (f"STATUS a1-{HUGE}", "bad-id"),
    (f"WAIT a1-{HUGE}", "bad-id"),
    (f"RESULT a1-{HUGE}", "bad-id"),
    (f"CANCEL a1-{HUGE}", "bad-id"),
    (f"ra1-{HUGE}", "unknown-command"),
    (f"r a1-{HUGE}", "unknown-command"),
    (f"LIST {HUGE}", "bad-request"),
    (HUGE, "bad-request"),
    (f"WAIT a1-1 {HUGE}", "bad-request"),
    (f"WAIT a1-1 {HUGE}.5", "bad-request"),
    (f"SUBMIT --timeout {HUGE} true", "bad-request"),
    ("SUBMIT --timeout 1e999 true", "bad-request"),
    ("SUBMIT --timeout inf true", "bad-request"),
    ("SUBMIT --timeout Infinity true", "bad-request"),
    ("SUBMIT --timeout -0 true", "bad-request"),
    ("SUBMIT --timeout 0 true", "bad-request"),
    ("SUBMIT --timeout ٣ true", "bad-request"),
    ("SUBMIT --timeout 1_0 true", "bad-request"),
    ("WAIT a1-1 nan", "bad-request"),
    ("WAIT a1-1 1e-999", "bad-request"),
    ("LIST ٣", "bad-request"),
    ("LIST -1", "bad-request"),
    ("LIST ²", "bad-request"),
    ("²", "unknown-command"),
    ("STATUS a1-١٢", "bad-id"),
    (f"STATUS a1-{'1' * 19}", "bad-id"),
])
def test_status_with_5000_digit_id_answers_bad_id_and_every_huge_number_bad_request(line, code):
    assert err_code(line.encode()) == code


def test_numbers_inside_their_bounds_still_parse():
    assert parse(b"WAIT n1-1 1e1") == Wait("n1-1", 10.0)
    assert parse(b"WAIT n1-1 .5") == Wait("n1-1", 0.5)
    assert parse(b"LIST 050") == ListJobs(50)
    assert parse(f"STATUS a1-{'9' * 18}".encode()) == Status(f"a1-{'9' * 18}")
    assert parse(b"SUBMIT --timeout 1e+03 true").spec.timeout_s == 1000.0
    assert parse(b"0").spec.sleep_ms == 0


@settings(max_examples=300)
@given(st.text(max_size=120))
def test_split_job_id_never_raises(text):
    home, seq = split_job_id(text)
    assert isinstance(home, str) and 0 <= seq < 10**JOB_SEQ_DIGITS_MAX
    if is_job_id(text):
        assert f"{home}-{seq}" == text.rpartition("-")[0] + "-" + str(int(text.rpartition("-")[2]))


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=100),
                 st.from_regex(r"[A-Za-z0-9_.]{1,8}(-[A-Za-z0-9_.]{1,8}){0,2}-[0-9]{1,25}", fullmatch=True)))
def test_one_job_id_definition_for_client_lines_and_peer_frames(text):
    """The client parser and the peer-frame check agree on every string."""
    from executor.edge import links
    from executor.config import Config
    from gossip import wire

    try:
        links._check_value(text, "job_id", Config.local())
        frame_ok = True
    except wire.ProtocolError:
        frame_ok = False
    try:
        client_ok = parse(f"STATUS {text}".encode()) == Status(text)
    except ClientError:
        client_ok = False
    if text != text.strip() or not text:
        return  # the line parser strips; the frame check does not
    assert frame_ok == client_ok == is_job_id(text)


# ---------------------------------------------------------------------------
# Issue 11, case 2 (the parser half): a last line without a newline.


def test_last_line_without_newline_is_returned_at_eof():
    splitter = LineSplitter(line_bytes_max=64)
    assert splitter.feed(b"HELP\nSUBMIT echo x") == [b"HELP"]
    assert splitter.finish() == [b"SUBMIT echo x"]
    assert splitter.finish() == [] and splitter.pending_bytes == 0
    assert splitter.feed(b"PEERS\r") == [] and splitter.finish() == [b"PEERS"]
    assert splitter.feed(b"QUIT\n") == [b"QUIT"] and splitter.finish() == []


def test_an_over_long_last_line_is_reported_once_not_again_at_eof():
    splitter = LineSplitter(line_bytes_max=8)
    assert splitter.feed(b"x" * 20) == [LineSplitter.TOO_LONG]
    assert splitter.finish() == []
    assert splitter.feed(b"HELP") == [] and splitter.finish() == [b"HELP"]  # usable again


@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\n" not in b), min_size=1, max_size=6), st.data())
def test_feed_then_finish_finds_every_line_with_or_without_the_last_newline(lines, data):
    stream = b"\n".join(lines)  # no newline after the last line
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    splitter = LineSplitter(line_bytes_max=1000)
    out, prev = [], 0
    for cut in cuts + [len(stream)]:
        out += splitter.feed(stream[prev:cut])
        prev = cut
    out += splitter.finish()
    expect = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if not lines[-1]:
        expect = expect[:-1]  # nothing after the last newline: no line
    assert out == expect


# ---------------------------------------------------------------------------
# Issue 11, case 4: control characters in a command are refused, by the one
# predicate the peer-frame check uses too.


@pytest.mark.parametrize("char", [chr(c) for c in range(0x20) if c not in (0x09, 0x0A)] + ["\x7f"])
def test_submit_with_a_control_character_answers_bad_request_naming_it(char):
    try:
        parse(f"SUBMIT sleep 0.3; echo a{char}b".encode())
    except ClientError as exc:
        assert exc.code == "bad-request"
        assert f"U+{ord(char):04X}" in exc.message or char == "\x00"  # NUL: refused for the whole line
        assert b"\n" not in exc.reply()[:-1] and b"\r" not in exc.reply()
    else:
        raise AssertionError(f"{char!r} accepted")


def test_cr_in_a_submit_is_refused_with_its_code_point():
    try:
        parse(b"SUBMIT sleep 0.3; echo a\rb")
    except ClientError as exc:
        assert exc.code == "bad-request" and "control character (U+000D)" in exc.message
    else:
        raise AssertionError("CR accepted")
    assert parse(b"SUBMIT printf 'a\tb'").spec.command == "printf 'a\tb'"  # TAB is text
    assert parse("SUBMIT echo héllo ✓".encode()).spec.command == "echo héllo ✓"


@settings(max_examples=400)
@given(st.text(max_size=40))
def test_every_command_a_client_may_submit_crosses_a_peer_link(command):
    """The client parser and the peer-frame check agree on commands: what a
    client got `OK` for is never refused by a link (which once wedged
    handoffs), and what a link refuses is never accepted from a client."""
    from executor.core import messages
    from executor.edge import links
    from executor.config import Config
    from gossip import wire

    config = Config.local()
    try:
        spec = parse(f"SUBMIT {command}".encode()).spec
    except ClientError:
        spec = None
    transfer = messages.JobTransfer("n1-1", "n1", "sh", command.strip(), 0, None, 1, 0, 1000.0)
    try:
        links._check_value(transfer, "", config)
        frame_ok = True
    except wire.ProtocolError:
        frame_ok = False
    options = command.strip().startswith("--")  # SUBMIT's options (tests below)
    if spec is not None:
        assert frame_ok and (spec.command == command.strip() or options)
    elif command.strip() and "\x00" not in command and len(command.strip().encode()) <= config.command_bytes_max:
        assert command_text_problem(command.strip()) is not None or options
        if command_text_problem(command.strip()) is not None:
            assert not frame_ok


# ---------------------------------------------------------------------------
# The same cases against real peer processes (tests/conftest.py `peers`).


def _ask(sock, line: bytes) -> bytes:
    """Send one line, read one reply line (bounded by the socket timeout)."""
    sock.sendall(line + b"\n")
    data = b""
    for _ in range(10_000):
        if data.endswith(b"\n"):
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data




def test_real_peer_answers_every_huge_number_and_keeps_the_connection(peers):
    import socket

    from executor.client import Client

    p = peers(name="a1", slots=1)
    p.start()
    with Client(p.addr) as c:
        job = c.submit("echo kept")
        c.wait(job, timeout_s=10)
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        try:
            for verb in ("STATUS", "WAIT", "RESULT", "CANCEL"):
                assert _ask(sock, f"{verb} a1-{HUGE}".encode()).startswith(b"ERR bad-id "), verb
            for line in (f"LIST {HUGE}", HUGE, f"WAIT {job} {HUGE}", f"SUBMIT --timeout {HUGE} true",
                         "SUBMIT --timeout 1e999 true", f"WAIT {job} nan"):
                assert _ask(sock, line.encode()).startswith(b"ERR bad-request "), line[:40]
            # The same connection still works, and the peer still serves.
            assert _ask(sock, f"STATUS {job}".encode()).startswith(f"OK {job} done".encode())
        finally:
            sock.close()
        assert c.result(job).stdout == b"kept\n"
        stats = c.stats()
        assert stats["jobs_submitted"] == 1 and stats.get("link_handler_errors", 0) == 0
    assert p.proc.poll() is None


def test_cr_in_a_submit_is_refused_and_links_keep_spreading_jobs(peers):
    """Case 4 on 3 real peers x 1 slot: the CR command gets `ERR bad-request`
    and nothing is stored; jobs with a TAB (text) spread and finish, and no
    link refuses a frame."""
    import socket
    import time

    from executor.client import Client

    a = peers(name="c1", slots=1)
    a.start()
    b = peers(name="c2", slots=1, join=[a.addr])
    c = peers(name="c3", slots=1, join=[a.addr])
    b.start()
    c.start()
    with Client(a.addr) as client:
        deadline = time.monotonic() + 20
        while sum(m.state == "alive" for m in client.members()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(m.state == "alive" for m in client.members()) == 3
        sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
        try:
            reply = _ask(sock, b"SUBMIT sleep 0.3; echo a\rb")
        finally:
            sock.close()
        assert reply.startswith(b"ERR bad-request command contains a control character (U+000D)"), reply
        assert client.stats()["jobs_submitted"] == 0
        jobs = [client.submit("sleep 0.3; printf 'a\\tb'") for _ in range(6)]
        results = [client.wait(j, timeout_s=30) for j in jobs]
        assert all(r.state == "done" for r in results)
        assert client.result(jobs[0]).stdout == b"a\tb"
        assert len({r.executor for r in results}) >= 2  # handed off: not all on the peer they came to
    for p in (a, b, c):
        with Client(p.addr) as client:
            assert client.stats().get("link_protocol_errors", 0) == 0, p.name


# ---------------------------------------------------------------------------
# The configuration reads its numbers with the same bounded parser.


@pytest.mark.parametrize("name, value", [
    ("PEERJOBS_LIST_MAX", "9" * 5000), ("PEERJOBS_LIST_MAX", "٣"), ("PEERJOBS_LIST_MAX", "-1"),
    ("PEERJOBS_LIST_MAX", "1e3"), ("PEERJOBS_WAIT_MAX_S", "1e999"), ("PEERJOBS_WAIT_MAX_S", "nan"),
    ("PEERJOBS_WAIT_MAX_S", "inf"), ("PEERJOBS_WAIT_MAX_S", "9" * 5000), ("PEERJOBS_WAIT_MAX_S", "-5"),
    ("PEERJOBS_GOSSIP_PROBE_INTERVAL_S", "Infinity"), ("PEERJOBS_SLOTS", "9" * 5000), ("PEERJOBS_SLOTS", "٣"),
    ("PEERJOBS_LISTEN", "127.0.0.1:" + "9" * 5000), ("PEERJOBS_LISTEN", "127.0.0.1:٣"),
])
def test_huge_or_odd_numbers_in_the_environment_are_one_clear_settings_error(name, value):
    from executor import settings as st

    with pytest.raises(st.SettingsError) as info:
        st.resolve_node({}, env={name: value})
    assert name in str(info.value) and len(str(info.value)) < 300


def test_numbers_in_a_config_file_are_bounded_too(tmp_path):
    from executor import settings as st

    for body in ("[config]\nwait_max_s = inf\n", "[config]\nwait_max_s = nan\n", f"[config]\nlist_max = {'9' * 30}\n",
                 "[config]\nlist_max = -1\n", "[node]\nslots = 0\n", "[config]\nlist_max = 1.5\n"):
        path = tmp_path / "c.toml"
        path.write_text(body)
        with pytest.raises(st.SettingsError):
            st.resolve_node({}, config_flag=str(path), env={})
    path.write_text("[config]\nwait_max_s = 30\nlist_max = 50\n[node]\nslots = 3\n")
    resolved = st.resolve_node({}, config_flag=str(path), env={"PEERJOBS_TICK_INTERVAL_S": "0.05"})
    assert (resolved.config.wait_max_s, resolved.config.list_max, resolved.value("slots")) == (30.0, 50, 3)
    assert resolved.config.tick_interval_s == 0.05


def test_real_peer_answers_a_last_line_without_newline_before_eof(peers):
    """Case 2 (`printf 'SUBMIT echo x' | nc -q1 HOST PORT`), end to end: the
    edge passes `LineSplitter.finish()` to the parser at EOF."""
    import socket

    from executor.client import Client

    def send_and_close(payload: bytes) -> bytes:
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            for _ in range(10_000):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            sock.close()

    p = peers(name="e1", slots=1)
    p.start()
    assert send_and_close(b"SUBMIT echo x") == b"OK e1-1\n"
    with Client(p.addr) as c:
        assert c.wait("e1-1", timeout_s=10).state == "done"
    reply = send_and_close(b"HELP\nWAIT e1-1 5\r")  # CRLF cut before its LF: still the last line
    assert reply.startswith(b"OK ") and b"\nOK e1-1 done " in reply and reply.endswith(b"\n")
    assert send_and_close(b"LIST " + HUGE.encode()).startswith(b"ERR bad-request ")
