"""The client library: the sans-IO reply parser, and the sync and trio APIs
against a real peer."""

from __future__ import annotations

import pytest
import trio

from executor.client import (
    LINE, LINES, RESULT, AsyncClient, Client, PeerError, ReplyReader, Unreachable, WaitTimeout, parse_peer,
    reply_shape,
)
from executor.core.protocol import ErrorCode
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


async def test_trio_unreachable():
    with pytest.raises(Unreachable, match="cannot reach peer"):
        await AsyncClient.open(f"127.0.0.1:{free_port()}", timeout_s=2)
