"""A real `peerjobs node` process on loopback: the protocol over TCP, hostile
input, and kill -9 / restart without losing an acknowledged job."""

from __future__ import annotations

import socket
import threading
import time

from executor.client import Client, PeerError


def _recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_protocol_over_tcp(peers):
    p = peers(slots=2)
    p.start()
    with Client(p.addr) as c:
        job = c.submit("echo hello; echo oops >&2; exit 3")
        status = c.wait(job, timeout_s=10)
        assert status.state == "failed" and status.fields["exit"] == "3"
        result = c.result(job)
        assert (result.stdout, result.stderr, result.exit_code) == (b"hello\n", b"oops\n", 3)
        sleeper = c.submit_sleep(10)
        assert c.wait(sleeper, 10).state == "done"
        assert c.result(sleeper).stdout == b""
        # The seed's shorthand: r<job-id>
        c.send_lines([f"r{sleeper}"])
        assert c.read_line().startswith(f"OK {sleeper} done exit=0 stdout=0 stderr=0")
        assert c.read_line() == ""
        slow = c.submit("sleep 30", timeout_s=0.3)
        status = c.wait(slow, 10)
        assert status.state == "failed" and status.fields["reason"] == "timeout"
        long = c.submit("sleep 30")
        c.cancel(long)
        assert c.wait(long, 10).state == "cancelled"
        try:
            c.wait(c.submit("sleep 5"), 0.2)
            raise AssertionError("WAIT did not time out")
        except PeerError as exc:
            assert exc.code == "timeout"
        assert len(c.list(3)) == 3
        assert "HELP" in "".join(c._lines("HELP"))
        stats = dict(line.split("=", 1) for line in c._lines("STATS"))
        assert int(stats["jobs_submitted"]) == 5 and int(stats["jobs_cancelled"]) == 1
        assert int(stats["slots"]) == 2 and int(stats["incarnation"]) == 1 and int(stats["clients"]) >= 1


def test_pipelined_replies_come_back_in_order(peers):
    p = peers(slots=4)
    p.start()
    with Client(p.addr) as c:
        ids = c.submit_many(["0"] * 300, window=64)
        assert [int(i.split("-")[-1]) for i in ids] == list(range(1, 301))


def test_garbage_and_long_lines_get_errors_while_others_are_served(peers):
    p = peers(slots=2)
    p.start()
    with Client(p.addr) as good:
        first = good.submit("echo before")
        bad = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        bad.sendall(b"\xff\xfe\x00garbage\n")
        assert _recv_line(bad).startswith(b"ERR encoding")
        bad.sendall(b"x" * (200 * 1024) + b"\n")
        assert _recv_line(bad).startswith(b"ERR line-too-long")
        bad.sendall(b"NOPE\n")
        assert _recv_line(bad).startswith(b"ERR unknown-command")
        bad.sendall(b"STATUS " + first.encode() + b"\n")  # the same connection still works
        assert _recv_line(bad).startswith(f"OK {first}".encode())
        bad.close()
        second = good.submit("echo after")
        assert good.wait(second, 10).state == "done"
        assert good.wait(first, 10).state == "done"
        assert good.result(first).stdout == b"before\n"


def test_connection_bound(peers, tmp_path):
    p = peers(slots=1)
    p.start()
    # The bound is 256; hold that many open and the next one is refused clearly.
    held = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(256)]
    try:
        for s in held:  # make sure every one has been accepted and counted
            s.sendall(b"HELP\n")
            assert _recv_line(s).startswith(b"OK")
        extra = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        assert _recv_line(extra).startswith(b"ERR too-many-connections")
        extra.close()
    finally:
        for s in held:
            s.close()


def _submit_all(addr: str, commands: list[str], acked: dict, lock: threading.Lock) -> None:
    try:
        with Client(addr, timeout_s=30) as c:
            for command in commands:
                job = c.submit(command)
                with lock:
                    acked[job] = command
    except (ConnectionError, OSError):
        pass  # the peer was killed: what was acknowledged is in `acked`


def _wait_all(addr: str, acked: dict, deadline_s: float) -> dict:
    results = {}
    deadline = time.monotonic() + deadline_s
    with Client(addr, timeout_s=60) as c:
        for job, command in acked.items():
            remaining = max(0.1, deadline - time.monotonic())
            status = c.wait(job, remaining)
            assert status.state == "done", (job, status)
            results[job] = (c.result(job), status)
    return results


def test_kill_minus_9_while_jobs_run_loses_nothing(peers):
    p = peers(slots=4)
    p.start()
    acked: dict[str, str] = {}
    lock = threading.Lock()
    commands = [f"sleep 0.02; echo job-{i}" for i in range(200)]
    clients = [threading.Thread(target=_submit_all, args=(p.addr, commands[k::5], acked, lock)) for k in range(5)]
    for t in clients:
        t.start()
    time.sleep(0.6)  # submissions are still arriving and jobs are running
    p.kill()
    for t in clients:
        t.join(timeout=30)
    assert acked, "nothing was acknowledged before the kill"
    p.start()
    # Clients submit the rest after the restart.
    done = set(acked.values())
    rest = [c for c in commands if c not in done]
    _submit_all(p.addr, rest, acked, lock)
    assert len(acked) == 200
    results = _wait_all(p.addr, acked, deadline_s=60)
    for job, command in acked.items():
        result, status = results[job]
        assert result.stdout == command.split("echo ")[1].encode() + b"\n"
        assert result.exit_code == 0
    reexecuted = [job for job, (r, s) in results.items() if int(s.fields["attempt"]) > 1]
    with Client(p.addr) as c:
        assert len(c.list(1000)) == 200  # one record per acknowledged job, no more
    print(f"acked={len(acked)} reexecuted={len(reexecuted)}")


def test_sigterm_stops_cleanly_and_running_jobs_run_again(peers):
    p = peers(slots=1)
    p.start()
    with Client(p.addr) as c:
        job = c.submit("sleep 1; echo finished")
        time.sleep(0.3)
        assert c.status(job).state == "running"
    p.stop()
    assert p.proc.returncode == 0
    assert "stopping" in p.log()
    p.start()
    with Client(p.addr) as c:
        status = c.wait(job, 15)
        assert status.state == "done" and status.fields["attempt"] == "2"
        assert c.result(job).stdout == b"finished\n"
