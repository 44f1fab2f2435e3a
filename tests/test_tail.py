"""TAIL and TAIL -f against real peers on loopback (docs/protocol.md, TAIL).

Jobs print a line, then wait for a gate file the test creates (bounded in
the job itself), so "mid-run" is a state the test makes, not a moment it
hopes to hit: no timing is asserted.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import trio

from executor.client import AsyncClient, Client, PeerError
from executor.client.replies import RESULT, ReplyReader, parse_status, submit_line
from executor.client.tail import atail, follow_job, is_last, tail, tail_at
from tests.conftest import ROOT, PeerProcess, wait_until

_GATE_POLLS = 600  # x 0.05 s: a gate never opened ends the wait after 30 s


def gate(path) -> str:
    """Shell text that waits (bounded) until `path` exists."""
    return f"i=0; while [ ! -e {path} ] && [ $i -lt {_GATE_POLLS} ]; do sleep 0.05; i=$((i+1)); done"


def gated_job(tmp, name: str) -> tuple[str, str, str]:
    """(command, gate 1, gate 2): prints one, [gate 1] two, [gate 2] three,
    an error line, exits 3."""
    g1, g2 = str(tmp / f"{name}-g1"), str(tmp / f"{name}-g2")
    cmd = f"echo one; echo e1 >&2; {gate(g1)}; echo two; {gate(g2)}; echo three; echo e2 >&2; exit 3"
    return cmd, g1, g2


def touch(path: str) -> None:
    with open(path, "w"):
        pass


class Raw:
    """A bare socket speaking the protocol, reading RESULT-framed replies."""

    def __init__(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.reader = ReplyReader()

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\n" for line in lines).encode())

    def read(self, shape: str = RESULT):
        while (reply := self.reader.next(shape)) is None:
            data = self.sock.recv(65536)
            assert data, "the peer closed the connection"
            self.reader.feed(data)
        return reply

    def raw_reply(self) -> bytes:
        """One RESULT-framed reply's exact bytes."""
        while True:
            before = bytes(self.reader.buf)
            reply = self.reader.next(RESULT)
            if reply is not None:
                return before[: len(before) - len(self.reader.buf)]
            data = self.sock.recv(65536)
            assert data, "the peer closed the connection"
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    p = PeerProcess(tmp_path_factory.mktemp("tail"), name="t1", slots=2)
    p.start()
    yield p
    p.stop()


def _running(addr: str, job: str) -> bool:
    with Client(addr, timeout_s=10) as c:
        return c.status(job).state == "running"


def test_tail_mid_run_then_follow_streams_in_order_and_the_next_command_waits_behind_it(peer, tmp_path):
    cmd, g1, g2 = gated_job(tmp_path, "a")
    with Client(peer.addr, timeout_s=10) as c:
        job = c.submit(cmd)
        # Mid-run (held at gate 1): the first line and nothing after it.
        snap = wait_until(lambda: (r := tail(c, job)).stdout == b"one\n" and r.stderr == b"e1\n" and r)
        assert snap.state == "running" and snap.status.fields["executor"] == "t1"
        assert "more" not in snap.status.fields
    raw = Raw(peer.addr)
    try:
        raw.send(f"TAIL {job} -f", f"STATUS {job}")
        frames = [raw.read()]
        assert frames[0].text.split()[1] == "running" and "more=yes" in frames[0].text
        assert frames[0].stdout == b"one\n"
        touch(g1)
        while b"two" not in b"".join(f.stdout for f in frames):
            frames.append(raw.read())
        touch(g2)
        while "more=no" not in frames[-1].text:
            frames.append(raw.read())
        statuses = [parse_status(f.text) for f in frames]
        assert all(s.fields["more"] == "yes" for s in statuses[:-1])
        last = statuses[-1]
        assert (last.state, last.fields["exit"], last.fields["more"]) == ("exited", "3", "no")
        assert b"".join(f.stdout for f in frames) == b"one\ntwo\nthree\n"
        assert b"".join(f.stderr for f in frames) == b"e1\ne2\n"
        # The STATUS sent right behind the TAIL -f is answered after its last frame.
        after = raw.read(shape="line")
        assert parse_status(after.text).job_id == job and parse_status(after.text).state == "failed"
    finally:
        raw.close()


def test_tail_of_a_finished_job_is_its_result_and_a_queued_job_has_no_output(peer, tmp_path):
    with Client(peer.addr, timeout_s=10) as c:
        done = c.submit("echo out; echo err >&2; exit 5")
        c.wait(done, timeout_s=15)
    raw = Raw(peer.addr)
    try:
        raw.send(f"TAIL {done}", f"RESULT {done}", f"TAIL {done} -f")
        tail_bytes, result_bytes, follow_bytes = raw.raw_reply(), raw.raw_reply(), raw.raw_reply()
        assert tail_bytes == result_bytes == follow_bytes
        assert tail_bytes.startswith(f"OK {done} failed exit=5 stdout=4 stderr=4".encode())
    finally:
        raw.close()
    # Both slots held by gated jobs: the next one queues.
    blockers = [gate(tmp_path / "blockers-go") for _ in range(2)]
    with Client(peer.addr, timeout_s=10) as c:
        held = [c.submit(b) for b in blockers]
        try:
            wait_until(lambda: all(_running(peer.addr, j) for j in held))
            queued = c.submit("echo later")
            assert c.status(queued).state == "queued"
            for line in (f"TAIL {queued}", f"TAIL {queued} -f"):
                c.send_lines([line])
                reply = c.read(RESULT)
                assert reply.ok and reply.text.startswith(f"{queued} queued exit=- stdout=0 stderr=0 ")
                assert (reply.stdout, reply.stderr) == (b"", b"")
            # A follower polls a queued job until it runs: its first pause
            # (taken only after a `queued` answer) opens the slots.
            pauses = []

            def pause(seconds: float) -> None:
                pauses.append(seconds)
                touch(str(tmp_path / "blockers-go"))
                time.sleep(seconds)

            written = []
            status = follow_job(peer.addr, queued, lambda o, e: written.append(o + e), poll_s=0.05,
                                start_wait_s=20, sleep=pause)
            assert pauses and status.state == "done" and b"".join(written) == b"later\n"
        finally:
            touch(str(tmp_path / "blockers-go"))


def test_a_client_hanging_up_mid_follow_frees_its_slot_and_the_peer_serves_on(peer, tmp_path):
    cmd, g1, g2 = gated_job(tmp_path, "h")
    with Client(peer.addr, timeout_s=10) as c:
        job = c.submit(cmd)
        wait_until(lambda: tail(c, job).stdout == b"one\n")
    for how in ("close", "half-close"):
        raw = Raw(peer.addr)
        raw.send(f"TAIL {job} -f")
        first = raw.read()
        assert "more=yes" in first.text and first.stdout == b"one\n"
        if how == "close":
            raw.close()
        else:  # EOF only: the stream ends with a last frame, then the peer closes
            raw.sock.shutdown(socket.SHUT_WR)
            last = raw.read()
            assert parse_status(last.text).state == "running" and "more=no" in last.text
            assert raw.sock.recv(100) == b""
            raw.close()
        # The peer serves on, and the hung-up client no longer counts.
        with Client(peer.addr, timeout_s=10) as c:
            wait_until(lambda: c.stats()["clients"] == 1)
            assert c.status(job).state == "running"
    touch(g1)
    touch(g2)
    with Client(peer.addr, timeout_s=10) as c:
        assert c.wait(job, timeout_s=30).exit_code == 3
        assert c.result(job).stdout == b"one\ntwo\nthree\n"


def test_the_python_follower_yields_every_byte_once(peer, tmp_path):
    cmd, g1, g2 = gated_job(tmp_path, "p")
    with Client(peer.addr, timeout_s=10) as c:
        job = c.submit(cmd)
        wait_until(lambda: tail(c, job).stdout == b"one\n")
        got = []
        for frame in tail(c, job, follow=True):
            got.append(frame)
            touch(g1 if len(got) == 1 else g2)
        assert is_last(got[-1]) and got[-1].state == "exited" and got[-1].exit_code == 3
        assert b"".join(f.stdout for f in got) == b"one\ntwo\nthree\n"
        # The connection serves on after the stream.
        assert c.wait(job, timeout_s=15).state == "failed"
    written = []
    status = follow_job(peer.addr, job, lambda o, e: written.append((o, e)), poll_s=0.05, start_wait_s=10)
    assert status.state == "failed" and status.exit_code == 3
    assert b"".join(o for o, _ in written) == b"one\ntwo\nthree\n" and b"".join(e for _, e in written) == b"e1\ne2\n"


def test_tail_at_the_home_of_a_job_running_elsewhere_points_there_and_the_cli_follows(peers, tmp_path):
    n1 = peers(name="n1", slots=1)
    n1.start()
    n2 = peers(name="n2", slots=1, join=[n1.addr])
    n2.start()
    wait_until(lambda: len([line for line in Client(n1.addr, timeout_s=5).peers() if " alive " in line]) == 2)
    # Two gated jobs on two 1-slot peers: one runs at each (a queued one is
    # stolen by the idle peer); the one at n2 is the subject.
    jobs = [gated_job(tmp_path, name) for name in ("x", "y")]
    with Client(n1.addr, timeout_s=10) as c:
        ids = [c.submit(cmd) for cmd, _, _ in jobs]
        where = wait_until(lambda: (w := {c.status(j).executor: j for j in ids if c.status(j).state == "running"})
                           and set(w) == {"n1", "n2"} and w, timeout_s=20, why=lambda: c.statuses(ids))
        job = where["n2"]
        _, g1, g2 = jobs[ids.index(job)]
        other = jobs[1 - ids.index(job)]
        try:
            with pytest.raises(PeerError) as err:
                tail(c, job)
            assert err.value.code == "elsewhere" and err.value.fields["executor"] == n2.addr
            # Any peer answers for what it runs; asked anywhere, tail_at gets there.
            wait_until(lambda: tail_at(n2.addr, job).stdout == b"one\n")  # (captured soon after the start)
            assert tail_at(n1.addr, job).stdout == b"one\n"
        finally:
            touch(other[1])
            touch(other[2])
    cli = subprocess.Popen([sys.executable, "-m", "executor.client.cli", "tail", "-f", "--peer", n1.addr, job],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The CLI shows the first line once it streams from n2; then the rest.
        first = cli.stdout.readline()
        assert first == b"one\n"
        touch(g1)
        touch(g2)
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert first + out == b"one\ntwo\nthree\n"
    assert err.startswith(b"e1\ne2\n") and b"failed" in err
    assert cli.returncode == 3


def test_the_cli_tail_without_follow_prints_the_output_so_far(peer, tmp_path):
    cmd, g1, g2 = gated_job(tmp_path, "c")
    with Client(peer.addr, timeout_s=10) as c:
        job = c.submit(cmd)
        wait_until(lambda: tail(c, job).stdout == b"one\n")
    try:
        run = subprocess.run([sys.executable, "-m", "executor.client.cli", "tail", "--peer", peer.addr, job],
                             cwd=ROOT, capture_output=True, timeout=30, check=False)
        assert (run.returncode, run.stdout, run.stderr) == (0, b"one\n", b"e1\n")
    finally:
        touch(g1)
        touch(g2)
    with Client(peer.addr, timeout_s=10) as c:
        c.wait(job, timeout_s=30)


async def test_the_trio_client_tails_and_follows(peer, tmp_path):
    cmd, g1, g2 = gated_job(tmp_path, "t")
    async with AsyncClient(peer.addr, timeout_s=10) as c:
        job = (await c.request(submit_line(cmd))).check().text
        for _ in range(300):  # bounded: 300 x 0.05 s
            snap = await atail(c, job)
            if snap.stdout == b"one\n":
                break
            await trio.sleep(0.05)
        assert snap.state == "running" and snap.stdout == b"one\n"
        frames = []
        async for frame in await atail(c, job, follow=True):
            frames.append(frame)
            touch(g1 if len(frames) == 1 else g2)
        assert is_last(frames[-1]) and frames[-1].state == "exited" and frames[-1].exit_code == 3
        assert b"".join(f.stdout for f in frames) == b"one\ntwo\nthree\n"
        assert (await c.status(job)).state == "failed"
