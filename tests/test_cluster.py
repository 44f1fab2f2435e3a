"""Real peer processes on loopback: membership, work stealing, kill -9.

Timing *targets* (detection within 2 s, rejoin within 1 s) are measured by
`python -m sim.bench membership`, not asserted here: these tests assert the
behaviour, with bounds loose enough for a shared, noisy machine.
"""

from __future__ import annotations

import collections
import signal
import time


from executor.client import Client
from tests.conftest import wait_until


def views(peer_procs) -> dict[str, dict[str, str]]:
    """Every live peer's view: {viewer: {member: state}}."""
    out = {}
    for p in peer_procs:
        if p.proc.poll() is not None:
            continue
        try:
            with Client(p.addr, timeout_s=5) as c:
                out[p.name] = {line.split()[0]: line.split()[2] for line in c.peers()}
        except OSError:
            pass
    return out


def cluster(peers, n: int, slots: int = 1):
    procs = []
    for i in range(n):
        p = peers(name=f"n{i + 1}", slots=slots, join=[procs[0].addr] if procs else [])
        p.start()
        procs.append(p)
    wait_until(lambda: all(len([s for s in v.values() if s == "alive"]) == n for v in views(procs).values())
               and len(views(procs)) == n, 15)
    return procs


def test_five_peers_find_each_other_and_see_deaths_and_rejoins(peers):
    procs = cluster(peers, 5)
    victim = procs[2]
    others = [p for p in procs if p is not victim]
    victim.kill()
    t0 = time.monotonic()
    wait_until(lambda: all(v.get("n3") == "dead" for v in views(others).values()), 15)
    detect_s = time.monotonic() - t0
    victim.start()
    t1 = time.monotonic()
    wait_until(lambda: all(v.get("n3") == "alive" for v in views(procs).values()) and len(views(procs)) == 5, 15)
    rejoin_s = time.monotonic() - t1
    with Client(victim.addr) as c:
        line = next(line for line in c.peers() if line.startswith("n3 "))
        assert line.endswith(" self") and "incarnation=2" in line
    print(f"detect={detect_s:.2f}s rejoin={rejoin_s:.2f}s")


def test_a_paused_peer_is_not_declared_dead(peers):
    procs = cluster(peers, 3)
    slow = procs[1]
    seen = collections.Counter()
    slow.proc.send_signal(signal.SIGSTOP)
    try:
        end = time.monotonic() + 0.5  # under the 0.8 s suspicion timeout of the local preset
        while time.monotonic() < end:
            for v in views([procs[0], procs[2]]).values():
                seen[v.get("n2")] += 1
            time.sleep(0.05)
    finally:
        slow.proc.send_signal(signal.SIGCONT)
    time.sleep(1.5)
    for v in views([procs[0], procs[2]]).values():
        seen[v.get("n2")] += 1
        assert v.get("n2") == "alive"
    assert seen["dead"] == 0, seen


def run_all(addr: str, commands: list[str]) -> list[str]:
    with Client(addr) as c:
        return c.submit_many([f"SUBMIT {cmd}" for cmd in commands])


def test_ninety_jobs_spread_evenly_over_three_peers(peers):
    procs = cluster(peers, 3)
    ids = run_all(procs[0].addr, ["sleep 0.3"] * 90)
    with Client(procs[0].addr) as c:
        for job in ids:
            assert c.wait(job, 60).state == "done"
        ran = collections.Counter(c.status(job).fields["executor"] for job in ids)
    assert sum(ran.values()) == 90
    for p in procs:
        assert 27 <= ran[p.name] <= 33, ran


def test_kill_the_peer_holding_stolen_jobs_loses_nothing(peers):
    procs = cluster(peers, 3)
    home = procs[0]
    ids = run_all(home.addr, [f"sleep 0.3; echo job-{i}" for i in range(90)])

    def holder() -> str | None:
        with Client(home.addr) as c:
            where = collections.Counter(c.status(j).fields["executor"] for j in ids)
        return next((name for name, n in where.items() if name != home.name and n >= 5), None)

    victim_name = wait_until(holder, 10)
    victim = next(p for p in procs if p.name == victim_name)
    victim.kill()
    time.sleep(0.5)
    victim.start()
    with Client(home.addr) as c:
        for i, job in enumerate(ids):
            assert c.wait(job, 120).state == "done", job
            result = c.result(job)
            assert result.stdout == f"job-{i}\n".encode()
        statuses = [c.status(j) for j in ids]
        assert len({s.job_id for s in statuses}) == 90
        assert len(c.list(1000)) == 90
    reexecuted = sum(1 for s in statuses if int(s.fields["attempt"]) > 1)
    print(f"victim={victim_name} reexecuted={reexecuted}")
