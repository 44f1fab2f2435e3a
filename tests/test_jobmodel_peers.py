"""The job model (issue 15) on two real peers over loopback, driven by raw
text lines as `nc` would send them: --env and --cwd reach the process, a
retried job, a dependency across homes, a delayed job, bad options, and
kill -9 of the home while a job is SCHEDULED or WAITING.

Each test starts its peers with the `peers` fixture (tests/conftest.py),
which kills whatever is still running at the end. Every wait is bounded.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Self

from tests.conftest import PeerProcess

IO_TIMEOUT_S = 30.0  # one reply; WAITs below ask for less
ALIVE_WAIT_S = 20.0


class Line:
    """A netcat-like connection: send a line, read a reply."""

    def __init__(self, peer: PeerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", peer.port), timeout=IO_TIMEOUT_S)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the peer closed the connection"
        self.buf += chunk

    def _line(self) -> str:
        for _ in range(100_000):
            nl = self.buf.find(b"\n")
            if nl >= 0:
                out, self.buf = self.buf[:nl], self.buf[nl + 1:]
                return out.decode()
            self._fill()
        raise AssertionError("no line")

    def ask(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self._line()

    def lines(self, text: str) -> list[str]:
        """`OK <k> <what>` and its k lines."""
        head = self.ask(text)
        count = int(head.split()[1])
        return [head] + [self._line() for _ in range(count)]

    def result(self, job: str) -> tuple[str, bytes, bytes]:
        head = self.ask(f"RESULT {job}")
        assert head.startswith(f"OK {job} "), head
        n_out = int(re.search(r" stdout=(\d+)", head).group(1))
        n_err = int(re.search(r" stderr=(\d+)", head).group(1))
        for _ in range(100_000):
            if len(self.buf) >= n_out + n_err + 1:
                break
            self._fill()
        body, self.buf = self.buf[: n_out + n_err + 1], self.buf[n_out + n_err + 1:]
        assert body.endswith(b"\n")
        return head, body[:n_out], body[n_out:n_out + n_err]

    def submit(self, text: str) -> str:
        reply = self.ask(f"SUBMIT {text}")
        assert re.fullmatch(r"OK \S+-\d+", reply), reply
        return reply.split()[1]

    def wait(self, job: str, seconds: float = 20.0) -> str:
        reply = self.ask(f"WAIT {job} {seconds:g}")
        assert reply.startswith(f"OK {job} "), reply
        return reply


def two_peers(peers, slots: int = 1) -> tuple[PeerProcess, PeerProcess]:
    a = peers(name="j1", slots=slots)
    a.start()
    b = peers(name="j2", slots=slots, join=[a.addr])
    b.start()
    deadline = time.monotonic() + ALIVE_WAIT_S
    with Line(a) as la, Line(b) as lb:
        while time.monotonic() < deadline:
            views = [la.lines("PEERS"), lb.lines("PEERS")]
            if all(sum(" alive " in entry for entry in view[1:]) == 2 for view in views):
                return a, b
            time.sleep(0.05)
    raise AssertionError(f"peers did not find each other: {views}")


BAD_LINES = [
    ("SUBMIT --retries -1 true", "--retries"),
    ("SUBMIT --priority 5000 true", "--priority"),
    ("SUBMIT --env NOEQUALS true", "--env"),
    ("SUBMIT --env 1X=2 true", "--env"),
    ("SUBMIT --bogus 1 true", "--bogus"),
    ("SUBMIT --delay 1 --at 5 true", "--delay"),
    ("SUBMIT --backoff 1 true", "--backoff"),
    ("SUBMIT --after notanid true", "--after"),
    ("SUBMIT --after j1-1,j1-1 true", "--after"),
    ("SUBMIT --timeout", "--timeout"),
    ("SUBMIT --after j1-9 true", "j1-9"),  # well-formed, never issued: not-found
]


def test_env_and_cwd_reach_the_process_and_bad_options_store_nothing(peers, tmp_path):
    a, _ = two_peers(peers)
    with Line(a) as c:
        for text, option in BAD_LINES:
            reply = c.ask(text)
            code = "not-found" if option == "j1-9" else "bad-request"
            assert reply.startswith(f"ERR {code} ") and option in reply, (text, reply)
        stats = dict(entry.split("=", 1) for entry in c.lines("STATS")[1:])
        assert stats["jobs_submitted"] == "0"
        # Batches of jobs spread over both peers, so --env and --cwd also cross
        # the peer link (a handoff): until one ran on j2 (bounded).
        executors = set()
        for _ in range(5):
            jobs = [c.submit(f"--env GREETING=hello --env PAIR=a=b --cwd {tmp_path} "
                             f"sleep 0.3; echo $GREETING $PAIR $PEERJOBS_JOB_ID; pwd") for _ in range(4)]
            for job in jobs:
                reply = c.wait(job)
                assert " done " in reply, reply
                executors.add(re.search(r" executor=(\S+)", reply).group(1))
                assert c.result(job)[1] == f"hello a=b {job}\n{tmp_path}\n".encode()
            if "j2" in executors:
                break
        assert "j2" in executors, executors
        # --cwd takes one word: a directory without spaces.
        plain = tmp_path / "work"
        plain.mkdir()
        job = c.submit(f"--cwd {plain} pwd")
        assert " done " in c.wait(job)
        assert c.result(job)[1] == f"{plain}\n".encode()
        # A directory missing where it runs: the run fails, naming the OS error.
        missing = tmp_path / "nowhere"
        job = c.submit(f"--cwd {missing} pwd")
        reply = c.wait(job)
        assert f"OK {job} failed " in reply and "reason=spawn-error" in reply, reply
        head, out, err = c.result(job)
        assert "reason=spawn-error" in head and out == b""
        assert b"No such file or directory" in err and str(missing).encode() in err, err


def test_a_job_that_fails_twice_then_succeeds_ends_done_on_its_third_try(peers, tmp_path):
    a, _ = two_peers(peers)
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each try leaves a mark; the third finds two and succeeds.
    command = (f"n=$(ls {marks} | wc -l); touch {marks}/try$n; "
               f"if [ $n -ge 2 ]; then echo third; else echo fail$n >&2; exit 1; fi")
    with Line(a) as c:
        job = c.submit(f"--retries 2 --backoff 0.1 {command}")
        reply = c.wait(job, 30)
        assert f"OK {job} done " in reply and "try=3/3" in reply and "exit=0" in reply, reply
        assert "attempt=3" in reply
        _, out, _ = c.result(job)
        assert out == b"third\n"
        assert sorted(p.name for p in marks.iterdir()) == ["try0", "try1", "try2"]
        # With no try left, the last failure is final.
        job = c.submit("--retries 1 --backoff 0.1 exit 3")
        reply = c.wait(job, 30)
        assert f"OK {job} failed " in reply and "try=2/2" in reply and "exit=3" in reply, reply


def test_a_dependency_across_the_two_homes(peers, tmp_path):
    a, b = two_peers(peers)
    out = tmp_path / "dep.txt"
    with Line(a) as ca, Line(b) as cb:
        first = cb.submit(f"sleep 1; echo from-j2 > {out}")
        second = ca.submit(f"--after {first} cat {out}")
        assert ca.ask(f"STATUS {second}").startswith(f"OK {second} waiting ")
        assert f"after={first}" in ca.ask(f"STATUS {second}")
        assert " done " in cb.wait(first)
        assert " done " in ca.wait(second)
        assert ca.result(second)[1] == b"from-j2\n"
        # An afterok dependency that fails cancels the dependent.
        bad = cb.submit("sleep 0.5; exit 1")
        dependent = ca.submit(f"--after {bad} echo never")
        reply = ca.wait(dependent)
        assert f"OK {dependent} cancelled " in reply and "reason=dependency-failed" in reply, reply
        # An id its home never issued.
        orphan = ca.submit("--after j2-999 echo never")
        reply = ca.wait(orphan)
        assert f"OK {orphan} cancelled " in reply and "reason=dependency-not-found" in reply, reply


def test_a_delayed_job_is_scheduled_then_done(peers, tmp_path):
    a, _ = two_peers(peers)
    with Line(a) as c:
        submitted = time.time()
        job = c.submit("--delay 1 date +%s.%N")
        reply = c.ask(f"STATUS {job}")
        assert reply.startswith(f"OK {job} scheduled "), reply
        due = float(re.search(r" due=([0-9.]+)", reply).group(1))
        assert submitted + 1 - 0.5 <= due <= time.time() + 1 + 0.5
        listed = c.lines("LIST --state scheduled")
        assert listed[0] == "OK 1 job" and listed[1].startswith(f"{job} scheduled")
        assert " done " in c.wait(job)
        ran_at = float(c.result(job)[1])
        assert ran_at >= due - 0.05  # not before it was due (wall clock, same machine)


def _count_lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_9_of_the_home_while_a_job_is_scheduled_or_waiting_it_still_runs_once(peers, tmp_path):
    a, b = two_peers(peers)
    scheduled_out = tmp_path / "scheduled.txt"
    waiting_out = tmp_path / "waiting.txt"
    try:
        with Line(a) as ca, Line(b) as cb:
            dep = cb.submit("sleep 3")
            waiting = ca.submit(f"--after {dep} echo ran >> {waiting_out}")
            scheduled = ca.submit(f"--delay 2 echo ran >> {scheduled_out}")
            assert ca.ask(f"STATUS {scheduled}").startswith(f"OK {scheduled} scheduled ")
            assert ca.ask(f"STATUS {waiting}").startswith(f"OK {waiting} waiting ")
        a.kill()
        time.sleep(2.5)  # the scheduled job falls due while its home is down
        a.start()
        with Line(a) as ca, Line(b) as cb:
            assert " done " in ca.wait(scheduled, 60)
            assert " done " in cb.wait(dep, 60)
            assert " done " in ca.wait(waiting, 60)
            time.sleep(1.0)  # room for a second run, if there were one
        assert _count_lines(scheduled_out) == 1
        assert _count_lines(waiting_out) == 1
    except (AssertionError, RuntimeError, OSError) as exc:
        raise AssertionError(f"{exc!r}\n--- j1 ---\n{a.log()[-4000:]}\n--- j2 ---\n{b.log()[-4000:]}") from exc
