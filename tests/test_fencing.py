"""Every message about a job is fenced by its attempt and its holder; what a
peer keeps for others stays bounded; a config that cannot frame a result is
refused. Found by reading (issue "hostile input...", case 15), kept by these
tests, each named for what it keeps. Three sans-IO peers (tests/test_handoff.py's
World): messages are fed to a home's core as if they came over a link."""

from __future__ import annotations

import dataclasses

import pytest

from executor.config import Config
from executor.core import PeerMessage, Send
from executor.core.messages import Handoff, HandoffAck, JobMoved, JobResult, JobTransfer, ResultAck
from gossip.membership import MemberForgotten
from storage import layout
from tests.test_handoff import World, durable, place_remote


def _result(job_id: str, attempt: int, executor: str, out: bytes) -> JobResult:
    return JobResult(job_id, attempt, executor, 0, None, out, b"", False, None, 1000.0)


def _feed(w: World, name: str, sender: str, msg) -> list:
    """Deliver `msg` from `sender` to `name`'s core; the sends it answers with."""
    core = w.peers[name].core
    core.handle(PeerMessage(sender, msg, None), w.now)
    writes, actions = core.take()
    w.peers[name].store.write(writes, sync=True)
    return [a.message for a in actions if isinstance(a, Send)]


def _remote_job(w: World) -> tuple[str, str, str]:
    """A job of p1's held by another peer, with the home's record saying so."""
    w.warm_up()
    job, holder = place_remote(w)
    w.deliver(("p1", holder))
    w.deliver_queued()
    record = w.home_record(job)
    assert record.executor == holder and not record.state.final
    other = next(n for n in w.peers if n not in ("p1", holder))
    return job, holder, other


def test_a_late_result_of_an_older_attempt_is_acknowledged_and_ignored():
    w = World()
    job, holder, _ = _remote_job(w)
    _feed(w, "p1", holder, JobMoved(job, 2, 0, holder, True))  # the holder restarted: attempt 2 runs
    answers = _feed(w, "p1", holder, _result(job, 1, holder, b"old"))
    assert ResultAck(job, 1) in answers  # its sender may stop resending ...
    assert not w.home_record(job).state.final  # ... but attempt 1 decides nothing
    _feed(w, "p1", holder, _result(job, 2, holder, b"new"))
    record = w.home_record(job)
    assert record.state.final and record.attempt == 2
    assert durable(w.peers["p1"], layout.OUTPUT, job) == [b"new", b""]


def test_only_the_holder_of_the_current_attempt_may_finish_a_job():
    w = World()
    job, holder, other = _remote_job(w)
    record = w.home_record(job)
    answers = _feed(w, "p1", other, _result(job, record.attempt, other, b"forged"))
    assert answers == [] and not w.home_record(job).state.final  # neither kept nor acknowledged
    assert w.peers["p1"].core.counters.results_refused == 1
    _feed(w, "p1", holder, _result(job, record.attempt, holder, b"real"))
    assert w.home_record(job).state.final
    assert durable(w.peers["p1"], layout.OUTPUT, job) == [b"real", b""]


def test_a_late_handoff_ack_never_deletes_the_queue_entry_of_a_newer_attempt():
    w = World()
    w.warm_up()
    core = w.peers["p2"].core
    # p2 lends a queued job of p3's (attempt 1; p3-1 takes its one slot) to p1 ...
    first, transfer = (JobTransfer(f"p3-{i}", "p3", "sleep", "", 60_000, None, 1, 0, 1000.0) for i in (1, 2))
    _feed(w, "p2", "p3", Handoff(900, "p3", 0, (first, transfer), 0, 0, 1))
    job = core.queue.pop("p3-2")
    core._lend("p1", [job], 0, w.now)
    lent_id = max(core.lends)
    core.take()
    # ... then p3 re-issues it and hands attempt 2 to p2, which makes it durable ...
    newer = dataclasses.replace(transfer, attempt=2)
    _feed(w, "p2", "p3", Handoff(901, "p3", 0, (newer,), 0, 0, 1))
    assert durable(w.peers["p2"], layout.HELD, "p3-2")["a"] == 2
    # ... and only now p1's ack of the old lend arrives: attempt 2 stays held.
    _feed(w, "p2", "p1", HandoffAck(lent_id, "p1", 1, 0, 1))
    assert durable(w.peers["p2"], layout.HELD, "p3-2")["a"] == 2
    assert core.queue["p3-2"].attempt == 2


def test_results_for_a_forgotten_home_leave_the_outbox_after_their_retention():
    w = World()
    job, holder, _ = _remote_job(w)
    core = w.peers[holder].core
    config = dataclasses.replace(core.config, outbox_orphan_retain_s=60.0)
    core.config = config
    w.crash("p1")  # the home is gone, for good
    w.finish(holder, job)
    assert job in core.outbox
    core._absorb([MemberForgotten("p1")], w.now)  # membership forgets it
    core.take()
    w.now += 30.0
    w.tick(holder)
    assert job in core.outbox  # still waiting: the home may be on a long outage
    w.now += 31.0
    w.tick(holder)
    assert job not in core.outbox and durable(w.peers[holder], layout.OUTBOX, job) is None
    assert core.counters.outbox_dropped == 1


def test_a_config_whose_result_cannot_be_framed_is_refused_at_start_up():
    with pytest.raises(ValueError, match="cannot carry one result"):
        Config.local(output_bytes_max=8 * 1024 * 1024)
    with pytest.raises(ValueError, match="handoff"):
        Config.local(command_bytes_max=1024 * 1024)
    Config.local(output_bytes_max=4 * 1024 * 1024 - 4096)  # just fits


@pytest.mark.parametrize("name", ["client_pipeline_max", "inbox_client_requests_max", "commit_writes_max"])
def test_a_config_that_would_hold_every_client_request_is_refused_at_start_up(name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        Config.local(**{name: 0})
    Config.local(**{name: 1})
