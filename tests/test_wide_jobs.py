"""`--slots K`: a job that takes K of a peer's slots. Loads count slots, a
wide job is never overtaken on its peer, and one wider than a peer waits
there for a peer wide enough."""

from __future__ import annotations

import pytest

from executor.core import JobExited, balance
from executor.core.errors import ClientError
from executor.core.messages import StealRequest
from executor.core.protocol import parse_command
from tests.conftest import CoreHarness, replies, starts

LIMITS = dict(command_bytes_max=4096, timeout_max_s=3600.0, wait_max_s=60.0, list_max=1000)


def submit(h: CoreHarness, line: str):
    actions = h.step(h.request(parse_command(line.encode(), **LIMITS)))
    (reply,) = replies(actions)
    return reply.decode(), actions


def test_a_wide_job_takes_its_slots_and_is_not_overtaken():
    h = CoreHarness(slots=4)
    _, actions = submit(h, "SUBMIT --slots 3 true")
    assert [s.job_id for s in starts(actions)] == ["n1-1"]
    assert h.core.load.running == 3
    _, actions = submit(h, "SUBMIT --slots 2 true")
    assert not starts(actions)  # 1 slot free: it waits
    _, actions = submit(h, "SUBMIT true")
    assert not starts(actions)  # and nothing behind it overtakes it
    assert (h.core.load.queued, h.core.load.running) == (3, 3)
    actions = h.step(JobExited("n1-1", 1, 0, None, b"", b""))
    assert [s.job_id for s in starts(actions)] == ["n1-2", "n1-3"]
    assert h.core.load.running == 3
    h.core.validate_state()


def test_a_job_wider_than_every_peer_is_refused_and_stores_nothing():
    h = CoreHarness(slots=2)
    reply, _ = submit(h, "SUBMIT --slots 3 true")
    assert reply.startswith("ERR bad-request --slots 3: no peer has that many (the widest has 2)")
    assert h.core.next_seq == 1
    for line in ("SUBMIT --slots 0 true", "SUBMIT --slots 99999999999999999999 true"):
        with pytest.raises(ClientError, match="--slots must be from 1 to 1024"):
            parse_command(line.encode(), **LIMITS)


def test_a_victim_gives_slots_worth_of_jobs_and_keeps_those_too_wide_for_the_thief():
    h = CoreHarness(slots=4)
    submit(h, "SUBMIT --slots 4 sleep 100")  # runs: the peer is full
    for line in ("SUBMIT --slots 3 true", "SUBMIT --slots 1 true", "SUBMIT --slots 1 true", "SUBMIT --slots 2 true"):
        submit(h, line)
    assert h.core.load.queued == 7
    core = h.core
    # A 2-slot thief with nothing to do asks for 3 slots' worth: it gets the
    # two 1-slot jobs (the 2-slot one would pass the grant) and never the
    # 3-slot job, too wide for it.
    moved, lent = [], []

    class ClusterView:  # what the victim's decision reads of the cluster
        balance_config = balance.BalanceConfig(steal_threshold=core.config.steal_threshold,
                                               steal_batch_max=core.config.handoff_batch_max)

        def observed(self, load):
            pass

        def moved(self, peer, width):
            moved.append((peer, width))

    core.cluster = ClusterView()
    core._lend = lambda receiver, jobs, request_id, now: lent.extend(jobs)
    core._on_steal_request(StealRequest(1, "n2", 0, 0, 2, 3), h.now)
    assert [job.job_id for job in lent] == ["n1-3", "n1-4"] and moved == [("n2", 2)]
    assert core.queue.width == 5
