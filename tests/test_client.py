"""The client library: the sans-IO reply parser, and the sync and trio APIs
against a real peer."""

from __future__ import annotations

import pytest
import trio

from executor.client import (
    LINE, LINES, RESULT, AsyncClient, Client, PeerError, ReplyReader, Unreachable, WaitTimeout, list_line,
    parse_peer, parse_status, reply_shape, submit_line,
)
from executor.core.protocol import ErrorCode
from executor.core.spec import parse_submit
from tests.conftest import PeerProcess, free_port


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    p = PeerProcess(tmp_path_factory.mktemp("client"), name="c1", slots=2)
    p.start()
    yield p
    p.stop()


# --- ReplyReader (no I/O)


def test_reader_waits_for_whole_replies_byte_by_byte():
    data = (b"OK n1-1\nERR not-found no job n1-9\nOK 2 peers\na x alive\nb y alive self\n"
            b"OK n1-1 done exit=0 stdout=3 stderr=2 attempt=1 executor=n1 truncated=no\nhi\nE!\n")
    shapes = [LINE, LINE, LINES, RESULT]
    reader, out = ReplyReader(), []
    for byte in data:
        reader.feed(bytes([byte]))
        while len(out) < len(shapes) and (reply := reader.next(shapes[len(out)])) is not None:
            out.append(reply)
    assert [r.ok for r in out] == [True, False, True, True]
    assert out[0].text == "n1-1"
    assert (out[1].code, out[1].message) == ("not-found", "no job n1-9")
    assert out[2].lines == ["a x alive", "b y alive self"]
    assert (out[3].stdout, out[3].stderr) == (b"hi\n", b"E!")
    assert reader.buf == b""


def test_reader_rejects_what_is_not_the_protocol():
    reader = ReplyReader()
    reader.feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ConnectionError, match="unexpected reply"):
        reader.next(LINE)


def test_reply_shapes_and_peer_lines():
    assert [reply_shape(x) for x in ("LIST 3", "peers", "RESULT n1-1", "rn1-1", "r n1-1", "SUBMIT rm x", "250")] == \
        [LINES, LINES, RESULT, RESULT, RESULT, LINE, LINE]
    p = parse_peer("n2 127.0.0.1:7002 suspect incarnation=3 queued=- running=- slots=- self")
    assert (p.id, p.state, p.incarnation, p.queued, p.is_self) == ("n2", "suspect", 3, None, True)


# --- request lines (no I/O)


def test_submit_line_carries_every_option_as_the_peer_reads_it():
    line = submit_line("sh -c 'echo $A; exit 3'", 2.5, retries=3, backoff_s=0.5, priority=-5,
                       env={"A": "1", "EMPTY": ""}, cwd="/tmp", at=1795944342.216, keep_s=60,
                       after=["n1-1", "n2-3"], after_any=["n1-4"])
    assert line == ("SUBMIT --timeout 2.5 --retries 3 --backoff 0.5 --priority -5 --at 1795944342.216 --keep 60 "
                    "--env A=1 --env EMPTY= --cwd /tmp --after n1-1,n2-3 --after-any n1-4 "
                    "sh -c 'echo $A; exit 3'")
    got = parse_submit(line.removeprefix("SUBMIT "), 16 * 1024, 3600.0)
    spec = got.spec
    assert (spec.command, spec.timeout_s, spec.retries, spec.backoff_s, spec.priority) == \
        ("sh -c 'echo $A; exit 3'", 2.5, 3, 0.5, -5)
    assert (spec.env, spec.cwd, spec.keep_s, spec.after, spec.after_any) == \
        ((("A", "1"), ("EMPTY", "")), "/tmp", 60.0, ("n1-1", "n2-3"), ("n1-4",))
    assert got.at == 1795944342.216  # not `1.79594e+09`: minutes off
    assert submit_line("echo hi") == "SUBMIT echo hi"
    assert submit_line("echo", delay_s=1e-05) == "SUBMIT --delay 0.00001 echo"
    # A value with spaces travels in the protocol's quotes, whichever of '...' and "..." carries it.
    line = submit_line("env", env={"A": "x  y", "B": "it's here", "C": 'say "hi"', "D": ""}, cwd="/my dir",
                       cron="*/5 * * * *", slots=2)
    assert line == ("SUBMIT --slots 2 --env 'A=x  y' --env 'B=it's here' --env 'C=say \"hi\"' --env D= "
                    "--cwd '/my dir' --cron '*/5 * * * *' env")
    got = parse_submit(line.removeprefix("SUBMIT "), 16 * 1024, 3600.0)
    assert got.spec.env == (("A", "x  y"), ("B", "it's here"), ("C", 'say "hi"'), ("D", ""))
    assert (got.spec.cwd, got.cron, got.spec.slots, got.spec.command) == ("/my dir", "*/5 * * * *", 2, "env")
    assert submit_line("true", env={"Q": "'quoted'"}) == "SUBMIT --env Q='quoted' true"
    odd = submit_line("true", cwd="'odd")  # starts with a quote: quoted, so that it reads back as itself
    assert odd != "SUBMIT --cwd 'odd true" and parse_submit(odd.removeprefix("SUBMIT "), 100, 10.0).spec.cwd == "'odd"
    assert submit_line("x", array="0-99%5") == "SUBMIT --array 0-99%5 x"
    assert submit_line("x", every_s=90) == "SUBMIT --every 90 x"
    # A command whose first word looks like an option gets `--` before it.
    assert submit_line("--version") == "SUBMIT -- --version"
    assert parse_submit("-- --version", 100, 10.0).spec.command == "--version"


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"env": {"A": "a' b\" c"}}, ValueError, "env value of A cannot be sent: it holds spaces"),
    ({"cwd": "/x\rdir"}, ValueError, "--cwd directory contains a control character"),
    ({"cron": "every five minutes"}, ValueError, "--cron 'every five minutes'"),
    ({"array": "5-1"}, ValueError, "--array 5-1: the last index is below the first"),
    ({"array": "1-3", "every_s": 5}, ValueError, "one of --array, --every and --cron"),
    ({"every_s": 0.5}, ValueError, "--every must be >= 1"),
    ({"slots": 0}, ValueError, "--slots must be from 1"),
    ({"env": {"1A": "x"}}, ValueError, "--env name '1A'"),
    ({"env": {"A=B": "x"}}, ValueError, "--env name 'A=B'"),
    ({"env": {"PEERJOBS_PEER": "x"}}, ValueError, "PEERJOBS_"),
    ({"retries": -1}, ValueError, "--retries must be from 0"),
    ({"priority": 10**6}, ValueError, "--priority must be from"),
    ({"backoff_s": 1.0}, ValueError, "--backoff needs --retries"),
    ({"delay_s": 1, "at": 2}, ValueError, "--delay or --at"),
    ({"after": ["n1-1", "../x"]}, ValueError, "--after: '../x' is not a job id"),
    ({"after_any": ["n1-1,n1-2"]}, ValueError, "after_any: 'n1-1,n1-2' is not a job id"),
    ({"after": []}, ValueError, "after is empty"),
    ({"timeout_s": float("nan")}, ValueError, "timeout_s must be finite"),
    ({"timeout_s": 0}, ValueError, "--timeout must be > 0"),
    ({"after": "n1-1"}, TypeError, "after must be a list of job ids"),
    ({"retries": 2.0}, TypeError, "retries must be an int"),
    ({"priority": True}, TypeError, "priority must be an int"),
    ({"retry": 2}, TypeError, "retry"),
])
def test_submit_line_refuses_what_would_not_reach_the_peer_as_meant(options, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace("$", r"\$")):
        submit_line("echo hi", **options)


def test_submit_line_refuses_a_command_the_peer_would_refuse():
    for command in ("", "   ", "echo a\nb", "echo a\rb", "echo \x1b[2J"):
        with pytest.raises(ValueError):
            submit_line(command)


def test_list_line_and_new_status_fields():
    assert list_line(5) == "LIST 5"
    assert list_line(5, "failed") == "LIST 5 --state failed"
    with pytest.raises(ValueError, match="not a state name"):
        list_line(5, "done --x")
    s = parse_status("n1-7 waiting attempt=1 executor=- priority=5 try=2/4 due=1795944342.5 after=n1-1,n2-9 "
                     "submitted=1795944300.000 reason=retry-backoff")
    assert (s.priority, s.tries, s.due, s.after, s.reason) == (5, (2, 4), 1795944342.5, ["n1-1", "n2-9"],
                                                              "retry-backoff")
    plain = parse_status("n1-8 done attempt=1 executor=n2 exit=0 submitted=1795944300.000")
    assert (plain.priority, plain.tries, plain.due, plain.after, plain.command) == (0, None, None, [], None)
    assert plain.to_dict()["try"] is None and s.to_dict()["try"] == [2, 4]
    # A peer may end a line with the command, which runs to the end of the line.
    with_cmd = parse_status("n1-9 queued attempt=1 executor=n1 priority=1 command=sh -c 'a=b c'")
    assert with_cmd.command == "sh -c 'a=b c'" and with_cmd.priority == 1


# --- sync API


def test_sync_api(peer):
    with Client(peer.addr, timeout_s=10) as c:
        job = c.submit("echo hello; echo oops >&2; exit 4")
        status = c.wait(job, timeout_s=10)
        assert status.final and status.state == "failed" and status.exit_code == 4
        res = c.result(job)
        assert (res.stdout, res.stderr, res.exit_code) == (b"hello\n", b"oops\n", 4)
        assert res.to_dict()["stdout"] == "hello\n"

        ids = c.submit_commands(["echo a", "echo b", "true"])
        assert all(isinstance(j, str) for j in ids)
        assert [c.wait(j).state for j in ids] == ["done"] * 3
        assert [s.state for s in c.statuses(ids)] == ["done"] * 3
        assert {s.job_id for s in c.list(3)} == set(ids)

        slow = c.submit("sleep 30")
        with pytest.raises(WaitTimeout):
            c.wait(slow, timeout_s=0.2)
        c.cancel(slow)
        assert c.wait(slow).state == "cancelled"
        with pytest.raises(PeerError) as info:
            c.status("no-such-1")
        assert info.value.code is ErrorCode.NOT_HOME
        # The home's address is data, not prose: "-" when this peer knows no member "no-such".
        assert info.value.fields == {"home": "-"}
        assert info.value.message.startswith("job no-such-1 belongs to peer no-such")

        (me,) = c.members()
        assert me.id == "c1" and me.is_self and me.slots == 2
        assert c.stats()["jobs_submitted"] >= 5


def test_sync_job_options(peer, tmp_path):
    """Each option reaches a real peer as meant: retries and priority show in
    the status, env and cwd in the output, a delayed job is scheduled, a
    dependency waits and is cancelled with its failed dependency, and LIST's
    state filter is the peer's."""
    with Client(peer.addr, timeout_s=10) as c:
        job = c.submit('echo "$GREETING"; pwd; exit 1', retries=1, backoff_s=0.01, priority=5,
                       env={"GREETING": "hi"}, cwd=str(tmp_path), keep_s=600)
        status = c.wait(job, timeout_s=10)
        assert (status.state, status.tries, status.priority, status.attempt) == ("failed", (2, 2), 5, 2)
        assert c.result(job).text == f"hi\n{tmp_path}\n"

        later = c.submit("echo later", delay_s=600)
        scheduled = c.status(later)
        assert scheduled.state == "scheduled" and scheduled.due > scheduled.submitted + 500
        blocker = c.submit("sleep 30")
        dependent = c.submit("echo never", after=[blocker])
        either = c.submit("echo either", after_any=[blocker])
        assert (c.status(dependent).state, c.status(dependent).after) == ("waiting", [blocker])
        assert [s.job_id for s in c.list(1000, state="scheduled")] == [later]
        assert {s.job_id for s in c.list(1000, state="waiting")} == {dependent, either}
        c.cancel(blocker)
        assert (c.wait(dependent, 10).state, c.status(dependent).reason) == ("cancelled", "dependency-failed")
        assert c.wait(either, 10).state == "done" and c.result(either).text == "either\n"
        c.cancel(later)
        assert c.status(later).state == "cancelled"
        with pytest.raises(ValueError, match="cannot be sent"):
            c.submit("true", env={"A": "a' b\" c"})
        assert c.list(1)[0].job_id == either  # nothing was sent for the refused one
        (tmp_path / "a dir").mkdir()
        spaced = c.submit('printf "%s|" "$A" "$(pwd)"', env={"A": "two  words"}, cwd=str(tmp_path / "a dir"))
        assert c.wait(spaced, 10).state == "done" and c.result(spaced).text == f"two  words|{tmp_path}/a dir|"

        array = c.submit('echo "element $PEERJOBS_ARRAY_INDEX"', array="1-4%2")
        whole = c.wait(array, timeout_s=10)
        assert whole.is_parent and (whole.state, whole.fields["elements"], whole.fields["done"]) == ("done", "4", "4")
        assert [s.job_id for s in c.list(10, array=array)] == [f"{array}.{i}" for i in (4, 3, 2, 1)]
        assert c.result(f"{array}.3").text == "element 3\n"


def test_unreachable_is_a_clear_connection_error():
    with pytest.raises(Unreachable, match=r"cannot reach peer 127\.0\.0\.1:\d+: connection refused"):
        Client(f"127.0.0.1:{free_port()}", timeout_s=2)


# --- trio API


async def test_trio_api(peer):
    async with AsyncClient(peer.addr, timeout_s=10) as c:
        ids = await c.submit_commands([f"echo {i}" for i in range(20)])
        statuses = []
        async with trio.open_nursery() as nursery:
            async def wait_one(j):
                async with AsyncClient(peer.addr) as w:
                    statuses.append(await w.wait(j, timeout_s=10))
            for j in ids[:5]:
                nursery.start_soon(wait_one, j)
        assert len(statuses) == 5 and all(s.state == "done" for s in statuses)
        for i, j in enumerate(ids):
            await c.wait(j)
            assert (await c.result(j)).stdout == f"{i}\n".encode()
        job = await c.submit("sleep 30", timeout_s=60)
        assert (await c.status(job)).state in ("queued", "running")
        with pytest.raises(WaitTimeout):
            await c.wait(job, timeout_s=0.1)
        await c.cancel(job)
        assert (await c.wait(job)).state == "cancelled"
        with pytest.raises(PeerError) as info:
            await c.result("c1-999999")
        assert info.value.code == "not-found"
        assert [m.id for m in await c.members()] == ["c1"]
        assert (await c.stats())["jobs_cancelled"] >= 1
        tagged = await c.submit_commands(['echo "$TAG"'] * 3, env={"TAG": "t"}, priority=2, retries=1)
        for j in tagged:
            status = await c.wait(j, timeout_s=10)
            assert (status.state, status.priority, status.tries) == ("done", 2, (1, 2))
            assert (await c.result(j)).text == "t\n"
        assert {s.job_id for s in await c.list(3, state="done")} == set(tagged)


async def test_trio_unreachable():
    with pytest.raises(Unreachable, match="cannot reach peer"):
        await AsyncClient.open(f"127.0.0.1:{free_port()}", timeout_s=2)
