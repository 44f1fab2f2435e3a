"""The job model (issue 15) on the sans-IO core: priorities, retries, delayed
jobs, dependencies (local and across homes), retention, LIST --state and the
SUBMIT option grammar — each transition with what a crash at each of its
steps does.

Every SUBMIT goes through the text protocol's parser (`line`), as a netcat
client's would. In `CoreHarness` the wall clock is `now`: advancing
`h.now` makes jobs due and records expire.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from executor.client.lines import submit_line
from executor.config import Config
from executor.core import (
    ClientRequest,
    JobExited,
    KillJob,
    PeerMessage,
    ReplyResult,
    StartJob,
    Tick,
    read_result,
)
from executor.core.errors import ClientError
from executor.core.jobs import JobRecord, JobState
from executor.core.messages import JobMoved, JobResult, ResultAck, StealRequest
from executor.core.protocol import Cancel, Status, parse_command
from storage import layout
from tests.conftest import CoreHarness, replies, starts
from tests.test_handoff import NAMES as NAMES_
from tests.test_handoff import ThreePeers, World, durable

CONFIG = Config.simulation()


def parse(text: str, config: Config = CONFIG):
    return parse_command(text.encode(), command_bytes_max=config.command_bytes_max,
                         timeout_max_s=config.job_timeout_max_s, wait_max_s=config.wait_max_s,
                         list_max=config.list_max)


def line(h: CoreHarness, text: str, sync: bool = True):
    """One client line through the parser and the core: (replies, actions)."""
    actions = h.step(h.request(parse(text, h.config)), sync=sync)
    return replies(actions), actions


def submit(h: CoreHarness, text: str, sync: bool = True) -> tuple[str, list]:
    """`SUBMIT <text>`: the id acknowledged, and the batch's actions."""
    (reply,), actions = line(h, f"SUBMIT {text}", sync)
    assert reply.startswith(b"OK ") and len(reply.split()) == 2, reply
    return reply.decode().split()[1], actions


def status(h: CoreHarness, job_id: str) -> str:
    (reply,), _ = line(h, f"STATUS {job_id}")
    return reply.decode().rstrip("\n")


def state(h: CoreHarness, job_id: str) -> JobState:
    return h.core.records[job_id].state


def started(actions) -> list[str]:
    return [s.job_id for s in starts(actions)]


def exit_job(h: CoreHarness, job_id: str, code: int = 0, reason: str | None = None, sync: bool = True,
             stdout: bytes = b""):
    """The running attempt of `job_id` exits: the batch's actions."""
    attempt = h.core.running[job_id].attempt
    return h.step(JobExited(job_id, attempt, code, reason, stdout, b""), sync=sync)


def busy_peer(h: CoreHarness) -> str:
    """Fill the harness's one slot with a long job; its id."""
    blocker, actions = submit(h, "sleep 100")
    assert started(actions) == [blocker]
    return blocker


def run_order(h: CoreHarness, first_done: str, limit: int = 50) -> list[str]:
    """Finish `first_done`, then every job as it starts: the order they start in."""
    order = []
    actions = exit_job(h, first_done)
    for _ in range(limit):
        (job,) = started(actions) or [None]
        if job is None:
            break
        order.append(job)
        actions = exit_job(h, job)
    return order


# ---------------------------------------------------------------------------
# Priorities


def test_a_priority_job_submitted_after_five_jobs_on_a_busy_one_slot_peer_starts_before_them():
    h = CoreHarness(slots=1)
    blocker = busy_peer(h)
    plain = [submit(h, f"echo {i}")[0] for i in range(5)]
    urgent, actions = submit(h, "--priority 5 echo urgent")
    assert started(actions) == []
    assert "priority=5" in status(h, urgent)
    assert run_order(h, blocker) == [urgent] + plain  # FIFO within priority 0


def test_fifo_within_each_priority_and_negative_priorities_last():
    h = CoreHarness(slots=1)
    blocker = busy_peer(h)
    low = [submit(h, f"--priority -3 echo low{i}")[0] for i in range(2)]
    mid = [submit(h, f"echo mid{i}")[0] for i in range(2)]
    high = [submit(h, f"--priority 7 echo high{i}")[0] for i in range(2)]
    mid.append(submit(h, "--priority 0 echo mid2")[0])
    high.append(submit(h, "--priority=7 echo high2")[0])
    assert run_order(h, blocker) == high + mid + low


def test_priority_order_survives_a_restart():
    h = CoreHarness(slots=1)
    blocker = busy_peer(h)
    plain = [submit(h, f"echo {i}")[0] for i in range(3)]
    urgent = submit(h, "--priority 5 echo urgent")[0]
    h.crash()
    assert next(iter(h.core.queue)) == urgent
    # The job that was running is queued again (attempt 2), among the priority-0 ones.
    assert h.core.records[blocker].attempt == 2 and h.core.queue[blocker].spec.priority == 0
    actions = h.tick()
    assert started(actions) == [urgent]
    assert run_order(h, urgent) == [blocker] + plain
    assert all(state(h, j) is JobState.DONE for j in [blocker, urgent, *plain])


def test_a_steal_gives_the_highest_priority_jobs_first():
    w = World()  # not warmed up: nobody is pushed to at submit, p1 keeps its jobs
    p1 = w.peers["p1"]
    ids = []
    for text in ["sleep 100", "echo a", "echo b", "--priority 9 echo c", "--priority 3 echo d"]:
        (reply,) = w._step("p1", [w_request(w, f"SUBMIT {text}")])
        ids.append(reply.decode().split()[1])
    assert list(p1.core.running) == [ids[0]]
    assert list(p1.core.queue) == [ids[3], ids[4], ids[1], ids[2]]
    w._step("p1", [PeerMessage("p2", StealRequest(77, "p2", 0, 0, 1, 2))])
    (lend,) = p1.core.lends.values()
    assert [job.job_id for job in lend.jobs] == [ids[3], ids[4]]  # priorities 9 then 3
    assert lend.jobs[0].spec.priority == 9
    assert list(p1.core.queue) == [ids[1], ids[2]]


def w_request(w: World, text: str):
    w.tokens += 1
    return ClientRequest((0, w.tokens), parse(text))


# ---------------------------------------------------------------------------
# Retries


def test_a_failed_try_is_scheduled_after_its_backoff_then_runs_as_a_new_attempt():
    h = CoreHarness(slots=1)
    job, actions = submit(h, "--retries 2 --backoff 4 false")
    assert started(actions) == [job]
    assert "try=1/3" in status(h, job)
    actions = exit_job(h, job, code=1)
    assert started(actions) == []
    record = h.core.records[job]
    assert record.state is JobState.SCHEDULED and record.attempt == 2 and record.floor == 2
    # Equal jitter: the first wait is within [backoff/2, backoff].
    assert h.now + 2.0 <= record.due_at <= h.now + 4.0
    line_ = status(h, job)
    assert "scheduled" in line_ and "try=2/3" in line_ and "last=nonzero-exit" in line_
    assert f"due={record.due_at:.3f}" in line_
    assert h.core._held_attempt(job) is None  # nothing held while it waits
    actions = h.tick(record.due_at - h.now - 0.01)
    assert started(actions) == []
    actions = h.tick(0.02)
    (start,) = starts(actions)
    assert start.job_id == job and start.attempt == 2
    assert "running" in status(h, job) and "try=2/3" in status(h, job)


def test_done_as_soon_as_one_try_succeeds():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--retries 3 false")  # no backoff: the retry is queued at once
    actions = exit_job(h, job, code=1)
    assert started(actions) == [job] and h.core.running[job].attempt == 2
    exit_job(h, job, code=0, stdout=b"ok\n")
    line_ = status(h, job)
    assert line_.startswith(f"OK {job} done attempt=2") and "try=2/4" in line_ and "exit=0" in line_
    assert h.core.counters.retried == 1
    (action,) = h.step(h.request(parse(f"RESULT {job}")))
    assert isinstance(action, ReplyResult)
    assert read_result(h.store, job).endswith(b"\nok\n\n")


def test_failed_only_when_the_last_try_failed_every_kind_of_failure_counts():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--retries 2 false")
    exit_job(h, job, code=None, reason="timeout")
    assert "last=timeout" in status(h, job) and state(h, job) is JobState.RUNNING  # retried at once, runs
    exit_job(h, job, code=None, reason="spawn-error")
    assert "try=3/3" in status(h, job)
    exit_job(h, job, code=2)
    line_ = status(h, job)
    assert line_.startswith(f"OK {job} failed attempt=3") and "exit=2" in line_ and "try=3/3" in line_
    assert "reason=nonzero-exit" in line_
    assert job not in h.core.queue and job not in h.core.running


def test_a_cancel_is_not_retried():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--retries 3 sleep 100")
    (reply,), actions = line(h, f"CANCEL {job}")
    assert reply == f"OK {job} cancelled\n".encode()
    assert any(isinstance(a, KillJob) for a in actions)
    actions = exit_job(h, job, code=None, reason="cancelled")
    assert started(actions) == []
    assert state(h, job) is JobState.CANCELLED and h.core.records[job].tries == 1
    assert h.core.counters.retried == 0


def test_cancel_of_a_job_waiting_for_its_retry():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--retries 3 --backoff 10 false")
    exit_job(h, job, code=1)
    assert state(h, job) is JobState.SCHEDULED
    (reply,), _ = line(h, f"CANCEL {job}")
    assert reply == f"OK {job} cancelled\n".encode()
    assert started(h.tick(60)) == []
    assert state(h, job) is JobState.CANCELLED
    h.crash()
    assert state(h, job) is JobState.CANCELLED and started(h.tick(60)) == []


def test_a_late_duplicate_result_of_the_failed_attempt_is_acked_and_ignored():
    w = World()
    w.warm_up()
    job, executor = remote_job(w, "--retries 1 --backoff 50 false")
    run = w.peers[executor].running[job]
    fail(w, executor, job)
    w.deliver_queued()
    record = w.peers["p1"].core.records[job]
    assert record.state is JobState.SCHEDULED and record.floor == 2
    # The same failed result again (a resend that crossed the ack): acked, ignored.
    late = JobResult(job, run.attempt, executor, 1, None, b"", b"", False, w.now, w.now)
    before = len(w.sent)
    w._step("p1", [PeerMessage(executor, late)])
    assert [m for _, a, b, m in w.sent[before:] if isinstance(m, ResultAck)] == [ResultAck(job, run.attempt)]
    record = w.peers["p1"].core.records[job]
    assert record.state is JobState.SCHEDULED and record.tries == 2 and w.peers["p1"].core.counters.retried == 1
    # A late SUCCESS of the failed attempt is fenced just the same.
    w._step("p1", [PeerMessage(executor, dataclasses.replace(late, exit_code=0))])
    assert w.peers["p1"].core.records[job].state is JobState.SCHEDULED


def test_crash_before_the_retrys_batch_is_synced_reruns_and_retries_exactly_once():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--retries 2 --backoff 30 false")
    exit_job(h, job, code=1, sync=False)  # the retry is decided, then lost
    h.crash()
    record = h.core.records[job]
    # The failed run is unknown to the restart: the job runs again (at-least-once), still try 1.
    assert record.state is JobState.QUEUED and record.tries == 1 and record.attempt == 2
    actions = h.tick()
    assert started(actions) == [job]
    exit_job(h, job, code=1)
    record = h.core.records[job]
    assert record.state is JobState.SCHEDULED and record.tries == 2 and h.core.counters.retried == 1
    h.crash()  # the retry is durable: still scheduled, not run again before it is due
    assert state(h, job) is JobState.SCHEDULED and started(h.tick()) == []
    assert started(h.tick(31)) == [job]
    exit_job(h, job, code=0)
    assert "done" in status(h, job) and "try=2/3" in status(h, job)


def test_crash_after_the_retry_is_synced_before_the_ack_the_resent_result_is_fenced():
    """Remote executor: its result sits in its outbox until acked. The home
    retries and crashes (1) before the sync: the resend is accepted and
    retried once; (2) after the sync: the resend is a duplicate, acked."""
    from tests.test_handoff import CRASH_AFTER_SYNC, CRASH_BEFORE_SYNC

    for mode in (CRASH_BEFORE_SYNC, CRASH_AFTER_SYNC):
        w = World()
        w.warm_up()
        job, executor = remote_job(w, "--retries 2 --backoff 50 false")
        fail(w, executor, job, deliver=False)
        assert durable(w.peers[executor], layout.OUTBOX, job) is not None
        result_link = (executor, "p1")
        deliver_until_type(w, result_link, JobResult, mode)
        assert not w.peers["p1"].up
        w.restart("p1")
        for _ in range(200):  # the executor resends until the restarted home acks
            w.advance(0.05, deliver=True)
            if durable(w.peers[executor], layout.OUTBOX, job) is None:
                break
        assert durable(w.peers[executor], layout.OUTBOX, job) is None, mode
        record = w.home_record(job)
        assert record.state is JobState.SCHEDULED and record.tries == 2 and record.attempt == 2, (mode, record)
        not_lost(w)


@pytest.mark.parametrize("backoff", ["0", "5"])
def test_a_retry_while_an_older_attempt_still_runs_at_the_home_waits_for_that_run_to_end(backoff):
    """Found by PeersModel below. The home runs attempt 1 of its job, and its
    record says attempt 1 runs at p2 (the home took back a handoff whose ack
    came late — docs/cluster.md, "run twice" — then p2's report came). p2's
    run fails: the home retries, kills its own run of attempt 1 (which holds
    its slot until it exits) and `_retry` -> `_enqueue` -> `_hold` queues
    attempt 2 at once, beside the old run (queued and running at once).
    With a free slot it starts at once: two runs of the job here together;
    `running` then forgets attempt 1, and `cancelled_running` (meant for
    attempt 1) swallows attempt 2's exit: its result is dropped and the job
    stays `running` with nothing running until the peer restarts. With a
    back-off the same happens when it falls due before the old run exits.
    (`_reissue` uses `_hold_newer` for exactly this.)"""
    h = CoreHarness(slots=2)
    job, actions = submit(h, f"--retries 1 --backoff {backoff} false")
    assert started(actions) == [job]
    h.step(PeerMessage("p2", JobMoved(job, 1, 1, "p2", True)))
    assert (h.core.records[job].executor, h.core.records[job].state) == ("p2", JobState.RUNNING)
    actions = h.step(PeerMessage("p2", JobResult(job, 1, "p2", 1, None, b"", b"", False, h.now, h.now)))
    assert [(type(a).__name__, a.attempt) for a in actions if isinstance(a, (KillJob, StartJob))] == [
        ("KillJob", 1)]
    actions = h.tick(6)  # due, with a back-off; the old run has not exited yet
    assert started(actions) == []
    h.core.validate_state()
    actions = h.step(JobExited(job, 1, None, "cancelled"))  # the killed run ends: attempt 2 starts
    assert [(s.job_id, s.attempt) for s in starts(actions)] == [(job, 2)]
    h.step(JobExited(job, 2, 0, None))
    assert status(h, job).startswith(f"OK {job} done attempt=2")


def test_backoff_doubles_and_is_bounded_by_retry_backoff_max_s():
    h = CoreHarness(slots=1, config=Config.simulation(retry_backoff_max_s=20.0))
    job, _ = submit(h, "--retries 6 --backoff 4 false")
    waits = []
    for _ in range(6):
        exit_job(h, job, code=1)
        record = h.core.records[job]
        waits.append(record.due_at - h.now)
        assert started(h.tick(record.due_at - h.now)) == [job]
    bases = [4, 8, 16, 20, 20, 20]
    for wait, base in zip(waits, bases):
        assert base / 2 <= wait <= base, (waits, bases)
    exit_job(h, job, code=1)
    assert status(h, job).startswith(f"OK {job} failed attempt=7") and "try=7/7" in status(h, job)


# ---------------------------------------------------------------------------
# Delayed jobs


def test_a_delayed_job_is_scheduled_until_due_then_runs():
    h = CoreHarness(slots=1)
    job, actions = submit(h, "--delay 30 echo later")
    assert started(actions) == []
    line_ = status(h, job)
    assert line_.startswith(f"OK {job} scheduled") and f"due={h.now + 30:.3f}" in line_
    assert started(h.tick(29.9)) == []
    assert started(h.tick(0.2)) == [job]
    exit_job(h, job)
    assert state(h, job) is JobState.DONE


def test_at_in_the_past_runs_at_once_and_at_in_the_future_waits():
    h = CoreHarness(slots=2)
    past, actions = submit(h, f"--at {h.now - 100:.0f} echo past")
    assert started(actions) == [past]
    future, actions = submit(h, f"--at {h.now + 50:.0f} echo future")
    assert started(actions) == [] and state(h, future) is JobState.SCHEDULED
    assert started(h.tick(49)) == []
    assert started(h.tick(1)) == [future]


def test_a_scheduled_job_survives_a_crash_and_one_due_while_down_runs_once_late():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--delay 10 echo x")
    h.crash()
    assert state(h, job) is JobState.SCHEDULED and started(h.tick(5)) == []
    h.crash()
    h.now += 100  # down past its due time
    h.core = h._boot()
    actions = h.tick()
    assert started(actions) == [job]
    h.crash()  # crashed while it runs: runs again as attempt 2 (at-least-once), not a second schedule
    assert h.core.records[job].attempt == 2 and not h.core.due
    assert started(h.tick()) == [job]
    exit_job(h, job)
    assert state(h, job) is JobState.DONE and started(h.tick(100)) == []


def test_crash_before_the_release_is_synced_releases_it_again():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--delay 10 echo x")
    h.now += 11
    actions = h.step(Tick(), sync=False)
    assert started(actions) == [job]
    h.crash()
    assert state(h, job) is JobState.SCHEDULED
    assert started(h.tick()) == [job]
    exit_job(h, job)
    assert state(h, job) is JobState.DONE


def test_cancel_of_a_scheduled_job():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--delay 10 echo x")
    (reply,), _ = line(h, f"CANCEL {job}")
    assert reply == f"OK {job} cancelled\n".encode()
    assert started(h.tick(20)) == [] and state(h, job) is JobState.CANCELLED
    h.crash()
    assert started(h.tick(20)) == [] and state(h, job) is JobState.CANCELLED
    (reply,), _ = line(h, f"CANCEL {job}")
    assert reply.startswith(b"ERR finished")


# ---------------------------------------------------------------------------
# Dependencies on one home


def test_an_afterok_chain_runs_in_order():
    h = CoreHarness(slots=2)
    a, actions = submit(h, "sleep 100")
    assert started(actions) == [a]
    b, actions = submit(h, f"--after {a} echo b")
    c, actions2 = submit(h, f"--after {b} echo c")
    assert started(actions + actions2) == []  # a free slot, and still they wait
    assert status(h, b).startswith(f"OK {b} waiting") and f"after={a}" in status(h, b)
    assert f"after={b}" in status(h, c)
    assert started(exit_job(h, a)) == [b]
    assert state(h, c) is JobState.WAITING
    assert started(exit_job(h, b)) == [c]
    exit_job(h, c)
    assert [state(h, j) for j in (a, b, c)] == [JobState.DONE] * 3


def test_afterok_on_a_finished_job_runs_at_once_and_on_a_failed_one_is_cancelled_at_once():
    h = CoreHarness(slots=1)
    good, _ = submit(h, "true")
    exit_job(h, good)
    bad, _ = submit(h, "false")
    exit_job(h, bad, code=1)
    ok_job, actions = submit(h, f"--after {good} echo ok")
    assert started(actions) == [ok_job]
    dep_failed, actions = submit(h, f"--after {bad} echo never")
    assert started(actions) == [] and state(h, dep_failed) is JobState.CANCELLED
    assert "reason=dependency-failed" in status(h, dep_failed)


@pytest.mark.parametrize("how", ["fail", "cancel"])
def test_afterok_on_a_failed_or_cancelled_job_cancels_a_chain_of_500(how):
    h = CoreHarness(slots=1)
    head, _ = submit(h, "sleep 100")
    chain = [head]
    for _ in range(500):
        chain.append(submit(h, f"--after {chain[-1]} echo x")[0])
    waiter, _ = submit(h, f"--after-any {chain[-1]} echo after-any")
    if how == "fail":
        exit_job(h, head, code=1)
    else:
        line(h, f"CANCEL {head}")
        exit_job(h, head, code=None, reason="cancelled")
    for job in chain[1:]:
        record = h.core.records[job]
        assert record.state is JobState.CANCELLED and record.reason == "dependency-failed", job
    assert "reason=dependency-failed" in status(h, chain[-1])
    assert state(h, waiter) is JobState.RUNNING  # afterany: runs whatever the state
    h.core.validate_state()
    h.crash()
    assert all(state(h, j) is JobState.CANCELLED for j in chain[1:])


def test_afterany_runs_after_a_failure_and_after_a_cancel():
    h = CoreHarness(slots=2)
    a, _ = submit(h, "sleep 100")
    b, _ = submit(h, "--delay 100 sleep 100")
    c, _ = submit(h, f"--after-any {a},{b} echo cleanup")
    exit_job(h, a, code=3)
    assert state(h, c) is JobState.WAITING and f"after={b}" in status(h, c)
    _, actions = line(h, f"CANCEL {b}")
    assert started(actions) == [c]


def test_after_and_after_any_together():
    h = CoreHarness(slots=2)
    a, _ = submit(h, "sleep 1")
    b, _ = submit(h, "sleep 1")
    c, _ = submit(h, f"--after {a} --after-any {b} echo c")
    exit_job(h, b, code=1)
    assert state(h, c) is JobState.WAITING
    assert started(exit_job(h, a)) == [c]


def test_a_dependency_that_is_also_delayed_is_scheduled_when_released():
    h = CoreHarness(slots=2)
    a, _ = submit(h, "sleep 1")
    b, _ = submit(h, f"--after {a} --delay 50 echo b")
    assert state(h, b) is JobState.WAITING
    h.now += 10
    assert started(exit_job(h, a)) == []
    assert state(h, b) is JobState.SCHEDULED
    assert started(h.tick(39)) == []
    assert started(h.tick(1.5)) == [b]


def test_an_unknown_local_dependency_is_not_found_and_nothing_is_stored():
    h = CoreHarness(slots=1)
    submit(h, "true")
    durable_before = dict(h.store.durable)
    next_before = h.core.next_seq
    (reply,), _ = line(h, "SUBMIT --after n1-7 echo x")
    assert reply.startswith(b"ERR not-found") and b"n1-7" in reply
    (reply,), _ = line(h, "SUBMIT --after-any n1-1,n1-2 echo x")  # n1-2 is its own id-to-be: never issued
    assert reply.startswith(b"ERR not-found") and b"n1-2" in reply
    assert h.core.next_seq == next_before and dict(h.store.durable) == durable_before
    assert submit(h, "true")[0] == "n1-2"


def test_a_waiting_job_survives_a_crash_and_is_released_after_the_restart():
    h = CoreHarness(slots=2)
    a, _ = submit(h, "sleep 1")
    b, _ = submit(h, f"--after {a} echo b")
    h.crash()
    assert state(h, b) is JobState.WAITING and h.core.unmet[b] == {a: None}
    actions = h.tick()
    assert started(actions) == [a]  # a runs again (attempt 2); b still waits
    assert started(exit_job(h, a)) == [b]


def test_crash_before_a_release_is_synced_releases_it_again():
    h = CoreHarness(slots=2)
    a, _ = submit(h, "sleep 1")
    b, _ = submit(h, f"--after {a} echo b")
    assert started(exit_job(h, a, sync=False)) == [b]
    h.crash()
    assert state(h, a) is JobState.QUEUED and state(h, b) is JobState.WAITING
    assert started(h.tick()) == [a]
    assert started(exit_job(h, a)) == [b]
    exit_job(h, b)
    assert state(h, b) is JobState.DONE


def test_crash_before_a_dependency_failed_cascade_is_synced_cascades_again():
    h = CoreHarness(slots=1)
    a, _ = submit(h, "sleep 1")
    b, _ = submit(h, f"--after {a} echo b")
    c, _ = submit(h, f"--after {b} echo c")
    exit_job(h, a, code=1, sync=False)
    assert state(h, c) is JobState.CANCELLED
    h.crash()
    assert [state(h, j) for j in (a, b, c)] == [JobState.QUEUED, JobState.WAITING, JobState.WAITING]
    h.tick()
    exit_job(h, a, code=1)
    h.crash()
    assert [state(h, j) for j in (a, b, c)] == [JobState.FAILED, JobState.CANCELLED, JobState.CANCELLED]


def test_cancel_of_a_waiting_job_and_its_dependents():
    h = CoreHarness(slots=1)
    a, _ = submit(h, "sleep 1")
    b, _ = submit(h, f"--after {a} echo b")
    c, _ = submit(h, f"--after {b} echo c")
    (reply,), _ = line(h, f"CANCEL {b}")
    assert reply == f"OK {b} cancelled\n".encode()
    assert state(h, c) is JobState.CANCELLED and h.core.records[c].reason == "dependency-failed"
    exit_job(h, a)
    assert state(h, b) is JobState.CANCELLED and h.core.records[b].reason == "cancelled"
    h.core.validate_state()


# ---------------------------------------------------------------------------
# Dependencies across homes (the three-peer World of tests/test_handoff.py)


def w_submit(w: World, name: str, text: str) -> str:
    (reply,) = w._step(name, [w_request(w, f"SUBMIT {text}")])
    assert reply.startswith(b"OK "), reply
    job = reply.decode().split()[1]
    w.acked.add(job)
    return job


def where_running(w: World, job: str) -> str | None:
    return next((n for n in w.live() if job in w.peers[n].running), None)


def fail(w: World, name: str, job: str, code: int = 1, deliver: bool = True) -> None:
    run = w.peers[name].running.pop(job)
    w._step(name, [JobExited(job, run.attempt, code, None)])
    if deliver:
        w.deliver_queued()


def run_until(w: World, job: str, rounds: int = 200) -> str:
    """Advance, finishing every other job, until `job` runs somewhere: where."""
    for _ in range(rounds):
        found = where_running(w, job)
        if found is not None:
            return found
        for name in w.live():
            for other in sorted(w.peers[name].running):
                if other != job:
                    w.finish(name, other)
        w.advance(0.05, deliver=True)
    raise AssertionError(f"{job} never ran: {w.home_record(job)}")


def remote_job(w: World, text: str, tries: int = 20) -> tuple[str, str]:
    """A job of p1 that runs on another peer: (id, executor). p1's slot is
    filled first (a long job, never finished here), so the job queues there
    and an idle peer steals it."""
    w_submit(w, "p1", "sleep 100")
    for _ in range(tries):
        job = w_submit(w, "p1", text)
        for _ in range(200):
            where = where_running(w, job)
            if where is not None:
                break
            w.advance(0.05, deliver=True)
        if where not in (None, "p1"):
            return job, where
        if where == "p1":
            w.finish("p1", job)
    raise AssertionError("no job of p1 ran elsewhere")


def not_lost(w: World) -> None:
    """World.check's durability half (its other half assumes every job
    succeeds), knowing that a SCHEDULED or WAITING job is a durable record at
    its home alone (a restart re-indexes it; nothing is held anywhere)."""
    for job_id in sorted(w.acked):
        record = w.home_record(job_id)
        if record is not None and record.state in (JobState.SCHEDULED, JobState.WAITING):
            continue
        w.check_not_lost(job_id)


def deliver_until_type(w: World, link, kind, mode: str) -> None:
    for _ in range(100):
        assert w.links[link], f"no {kind.__name__} on {link}"
        if isinstance(w.links[link][0], kind):
            w.deliver(link, mode)
            return
        w.deliver(link)
    raise AssertionError(f"no {kind.__name__} on {link}")


def settle_until(w: World, done, rounds: int = 400) -> None:
    for _ in range(rounds):
        if done():
            return
        for name in w.live():
            for other in sorted(w.peers[name].running):
                w.finish(name, other)
        w.advance(0.05, deliver=True)
    raise AssertionError("never settled")


def test_a_job_waiting_for_a_job_of_another_home_is_released_when_it_is_done():
    w = World()
    w.warm_up()
    dep = w_submit(w, "p2", "sleep 1")
    job = w_submit(w, "p1", f"--after {dep} echo after")
    assert w.peers["p1"].core.records[job].state is JobState.WAITING
    where = run_until(w, dep)
    w.advance(3.0, deliver=True)  # polled meanwhile: still waiting
    assert w.peers["p1"].core.records[job].state is JobState.WAITING and where_running(w, job) is None
    w.finish(where, dep)
    settle_until(w, lambda: w.is_final(job))
    assert w.home_record(job).state is JobState.DONE
    w.check()


@pytest.mark.parametrize("how", ["fail", "cancel"])
def test_a_job_waiting_for_a_job_of_another_home_is_cancelled_when_that_fails(how):
    w = World()
    w.warm_up()
    dep = w_submit(w, "p2", "sleep 1")
    job = w_submit(w, "p1", f"--after {dep} echo after")
    chained = w_submit(w, "p1", f"--after {job} echo chained")
    anyway = w_submit(w, "p3", f"--after-any {dep} echo anyway")
    where = run_until(w, dep)
    if how == "fail":
        fail(w, where, dep)
    else:
        w._step("p2", [w_request(w, f"CANCEL {dep}")])
        w.deliver_queued()
    settle_until(w, lambda: all(w.is_final(j) for j in (job, chained, anyway)))
    for j in (job, chained):
        record = w.home_record(j)
        assert record.state is JobState.CANCELLED and record.reason == "dependency-failed", record
    assert w.home_record(anyway).state is JobState.DONE
    not_lost(w)


def test_a_dependency_on_an_id_its_home_never_issued_is_cancelled_not_found():
    w = World()
    w.warm_up()
    job = w_submit(w, "p1", "--after p2-99 echo never")
    assert w.peers["p1"].core.records[job].state is JobState.WAITING
    settle_until(w, lambda: w.is_final(job))
    record = w.home_record(job)
    assert record.state is JobState.CANCELLED and record.reason == "dependency-not-found"


def test_a_remote_wait_survives_a_crash_of_the_waiting_home():
    w = World()
    w.warm_up()
    dep = w_submit(w, "p2", "sleep 1")
    job = w_submit(w, "p1", f"--after {dep} echo after")
    w.advance(1.5, deliver=True)  # polled at least once
    w.crash("p1")
    w.restart("p1")
    assert w.peers["p1"].core.records[job].state is JobState.WAITING
    assert w.peers["p1"].core.unmet[job] == {dep: None}
    settle_until(w, lambda: w.is_final(job))
    assert w.home_record(dep).state is JobState.DONE and w.home_record(job).state is JobState.DONE
    w.check()


def test_cancelling_a_job_that_waits_on_another_home_stops_asking_that_home():
    """A client cancels a job waiting for a job of p2 that never ends: p1
    stops asking p2 about it (found here: it used to poll until p2's job
    ended or p1 restarted)."""
    from executor.core.messages import DependencyQuery

    w = World()
    w.warm_up()
    dep = w_submit(w, "p2", "sleep 1000")
    job = w_submit(w, "p1", f"--after {dep} echo never")
    w.advance(2.0, deliver=True)
    assert any(isinstance(m, DependencyQuery) and a == "p1" for _, a, _, m in w.sent)
    (reply,) = w._step("p1", [w_request(w, f"CANCEL {job}")])
    assert reply == f"OK {job} cancelled\n".encode()
    since = len(w.sent)
    w.advance(5.0, deliver=True)
    asked = [m for _, a, _, m in w.sent[since:] if isinstance(m, DependencyQuery) and a == "p1"]
    assert asked == [], f"{len(asked)} queries for {asked[0].job_ids} after the only waiter was cancelled"


def test_a_dependency_on_an_id_not_yet_issued_by_another_home_is_cancelled_at_the_first_poll():
    """How cycles across homes are broken (docs/cluster.md): p1's job names
    p2-1 before p2 issued it; p2 answers the first poll `unknown`, which
    cancels it; p2-1, issued later and waiting for it, is then cancelled
    in turn (dependency-failed)."""
    w = World()
    w.warm_up()
    a = w_submit(w, "p1", "--after p2-1 echo a")
    w.advance(0.1, deliver=True)  # p1 asks p2 at its next tick
    assert w.peers["p1"].core.records[a].reason == "dependency-not-found"
    b = w_submit(w, "p2", f"--after {a} echo b")
    assert b == "p2-1"
    settle_until(w, lambda: w.is_final(a) and w.is_final(b))
    assert w.home_record(b).reason == "dependency-failed"


def test_a_cycle_issued_within_one_tick_waits_until_a_cancel_ends_it():
    """The documented exception: p2-1 is issued before p1's first poll, so
    each waits for the other; CANCEL of one cancels the other."""
    w = World()
    w.warm_up()
    a = w_submit(w, "p1", "--after p2-1 echo a")
    b = w_submit(w, "p2", f"--after {a} echo b")
    w.advance(3.0, deliver=True)
    assert w.peers["p1"].core.records[a].state is JobState.WAITING
    assert w.peers["p2"].core.records[b].state is JobState.WAITING
    (reply,) = w._step("p1", [w_request(w, f"CANCEL {a}")])
    assert reply == f"OK {a} cancelled\n".encode()
    settle_until(w, lambda: w.is_final(b))
    assert w.home_record(b).reason == "dependency-failed"


# ---------------------------------------------------------------------------
# Retention


def test_keep_forgets_the_record_and_output_on_the_wall_clock_after_the_end():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--keep 5 echo x")
    h.now += 100  # a long run: retention counts from the end
    exit_job(h, job, stdout=b"x\n")
    assert layout.key(layout.OUTPUT, job) in h.store.durable
    h.tick(4.9)
    assert status(h, job).startswith(f"OK {job} done")
    h.tick(0.2)
    reply = status(h, job)
    assert reply.startswith("ERR not-found") and "expired" in reply
    assert layout.key(layout.JOB, job) not in h.store.durable
    assert layout.key(layout.OUTPUT, job) not in h.store.durable
    h.crash()
    assert status(h, job).startswith("ERR not-found") and submit(h, "true")[0] == "n1-2"


def test_keep_survives_a_restart():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--keep 5 echo x")
    exit_job(h, job)
    h.crash()
    h.tick(3)
    assert status(h, job).startswith(f"OK {job} done")
    h.crash()
    h.tick(3)
    assert status(h, job).startswith("ERR not-found")


def test_the_peer_wide_retention_applies_without_keep_and_keep_overrides_it():
    h = CoreHarness(slots=2, config=Config.simulation(records_retained_s=10.0))
    plain, _ = submit(h, "echo plain")
    kept, _ = submit(h, "--keep 100 echo kept")
    cancelled, _ = submit(h, "--delay 50 echo never")
    line(h, f"CANCEL {cancelled}")
    exit_job(h, plain)
    exit_job(h, kept)
    h.crash()
    h.tick(11)
    assert status(h, plain).startswith("ERR not-found")
    assert status(h, cancelled).startswith("ERR not-found")
    assert status(h, kept).startswith(f"OK {kept} done")
    h.tick(90)
    assert status(h, kept).startswith("ERR not-found")
    h.core.validate_state()


def test_a_job_waiting_for_a_dependency_is_released_before_the_dependency_is_forgotten():
    h = CoreHarness(slots=1)
    a, _ = submit(h, "--keep 1 sleep 1")
    b, _ = submit(h, f"--after {a} echo b")
    exit_job(h, a)
    h.tick(5)
    assert status(h, a).startswith("ERR not-found")
    assert state(h, b) is JobState.RUNNING


def test_a_met_dependency_forgotten_while_its_dependent_still_waits_stays_met_after_a_restart():
    """Found by JobModel below. b waits for a (done, --keep 2) and for s
    (scheduled). a is forgotten after 2 s, as asked; b still waits for s.
    After a restart b's unmet dependencies are rebuilt from its spec, and a
    (no record any more, a local id) is taken as unmet for ever: b never
    runs, though both its dependencies succeeded."""
    h = CoreHarness(slots=2)
    s, _ = submit(h, "--delay 10 sleep 1")
    a, _ = submit(h, "--keep 2 true")
    exit_job(h, a)
    b, _ = submit(h, f"--after {a},{s} echo b")
    assert h.core.unmet[b] == {s: None}
    h.tick(5)
    assert status(h, a).startswith("ERR not-found")  # forgotten, as asked
    h.crash()
    assert state(h, b) is JobState.WAITING
    h.tick(10)  # s is due and runs
    assert started(exit_job(h, s)) == [b]


def test_a_retention_expiry_lost_in_a_crash_is_forgotten_again_at_the_first_tick():
    h = CoreHarness(slots=1)
    job, _ = submit(h, "--keep 5 echo x")
    exit_job(h, job, stdout=b"x\n")
    h.now += 6
    h.step(Tick(), sync=False)
    assert job not in h.core.records
    h.crash()
    assert state(h, job) is JobState.DONE
    h.tick()
    assert status(h, job).startswith("ERR not-found")
    assert layout.key(layout.JOB, job) not in h.store.durable


def test_a_dependency_that_is_retried_keeps_its_dependent_waiting_until_a_try_succeeds():
    h = CoreHarness(slots=2)
    a, _ = submit(h, "--retries 2 --backoff 5 false")
    b, _ = submit(h, f"--after {a} echo b")
    exit_job(h, a, code=1)
    assert state(h, a) is JobState.SCHEDULED and state(h, b) is JobState.WAITING
    assert started(h.tick(5)) == [a]
    assert started(exit_job(h, a)) == [b]


def test_cancelled_scheduled_jobs_do_not_count_against_the_busy_bound():
    """The due heap deletes lazily: a cancelled scheduled job stays in it
    until its due time (here 1000 s). `_submit` bounds `len(self.due)`, so
    SUBMIT answers `ERR busy 0 jobs waiting and 2 scheduled here` with
    nothing scheduled, until the cancelled jobs' due times pass."""
    h = CoreHarness(slots=1, config=Config.simulation(queue_jobs_max=2))
    for job in [submit(h, "--delay 1000 true")[0] for _ in range(2)]:
        line(h, f"CANCEL {job}")
    (reply,), _ = line(h, "SUBMIT --delay 1000 true")
    assert reply.startswith(b"OK "), reply


# ---------------------------------------------------------------------------
# LIST --state and bad options


def test_list_filters_by_state():
    h = CoreHarness(slots=1)
    running, _ = submit(h, "sleep 1")
    queued, _ = submit(h, "echo q")
    scheduled, _ = submit(h, "--delay 100 echo s")
    waiting, _ = submit(h, f"--after {queued} echo w")
    cancelled, _ = submit(h, "echo c")
    line(h, f"CANCEL {cancelled}")
    expected = {"running": [running], "queued": [queued], "scheduled": [scheduled], "waiting": [waiting],
                "cancelled": [cancelled], "done": [], "failed": []}
    for name, ids in expected.items():
        (reply,), _ = line(h, f"LIST --state {name}")
        lines = reply.decode().splitlines()
        assert lines[0] == f"OK {len(ids)} job{'' if len(ids) == 1 else 's'}", (name, lines)
        assert [entry.split()[0] for entry in lines[1:]] == ids and all(f" {name} " in e for e in lines[1:])
    (reply,), _ = line(h, "LIST 2")
    assert [e.split()[0] for e in reply.decode().splitlines()[1:]] == [cancelled, waiting]
    (reply,), _ = line(h, "LIST 1 --state queued")
    head, entry = reply.decode().splitlines()
    assert head == "OK 1 job" and entry.startswith(status(h, queued)[3:]) and entry.endswith(" command=echo q")
    with pytest.raises(ClientError):
        parse("LIST --state bogus")


BAD_OPTIONS = [
    ("--retries -1 true", "--retries"),
    ("--priority 5000 true", "--priority"),
    ("--priority -1001 true", "--priority"),
    ("--env NOEQUALS true", "--env"),
    ("--env 1X=2 true", "--env"),
    ("--env PEERJOBS_JOB_ID=x true", "--env"),
    ("--bogus 1 true", "--bogus"),
    ("--delay 1 --at 5 true", "--delay"),
    ("--backoff 1 true", "--backoff"),
    ("--after notanid true", "--after"),
    ("--after n1-1,n1-1 true", "--after"),
    ("--after-any n1-1,,n1-2 true", "--after-any"),
    ("--timeout", "--timeout"),
    ("--retries 101 true", "--retries"),
    ("--retries 2 --retries 3 true", "--retries"),
    ("--delay -5 true", "--delay"),
    ("--delay nan true", "--delay"),
    ("--at 1e30 true", "--at"),
    ("--backoff 1e9 --retries 1 true", "--backoff"),
]


@pytest.mark.parametrize("text, option", BAD_OPTIONS)
def test_a_bad_option_is_bad_request_naming_it_and_stores_nothing(text, option):
    h = CoreHarness(slots=1)
    submit(h, "true")  # n1-1 exists, so --after n1-1 alone would be fine
    durable_before = dict(h.store.durable)
    with pytest.raises(ClientError) as caught:
        parse(f"SUBMIT {text}")
    reply = caught.value.reply().decode()
    assert reply.startswith("ERR bad-request ") and option in reply, reply
    # Through the peer as a line would go: the edge answers, the core sees nothing.
    assert h.core.next_seq == 2 and dict(h.store.durable) == durable_before


def test_options_are_taken_in_any_order_and_the_command_runs_as_written():
    h = CoreHarness(slots=1)
    job, actions = submit(h, "--env A=1 --cwd sub --priority 2 --env B=x=y --timeout 5 -- --not-an-option $A")
    (start,) = starts(actions)
    assert start.spec.command == "--not-an-option $A"
    assert start.spec.env == (("A", "1"), ("B", "x=y")) and start.spec.cwd == "sub"
    assert start.spec.priority == 2 and start.spec.timeout_s == 5.0
    h.crash()  # every option is in the durable record and the held copy
    assert h.core.records[job].spec == start.spec == h.core.queue[job].spec


# ---------------------------------------------------------------------------
# Any sequence of submits, exits, cancels, ticks and crashes


OPTIONS = st.fixed_dictionaries({
    "priority": st.integers(-2, 2),
    "retries": st.integers(0, 2),
    "backoff": st.sampled_from([None, 0.5, 3.0]),
    "delay": st.sampled_from([None, None, 0.0, 1.0, 5.0]),
    "keep": st.sampled_from([None, None, 2.0]),
    "deps": st.lists(st.integers(0, 30), max_size=2, unique=True),
    "any": st.booleans(),
})


def option_line(opts: dict, deps: list[str], keep: bool = True) -> str:
    """The SUBMIT line of drawn `OPTIONS` for `true`, built by the client's
    own builder (executor/client/lines.py); `keep=False` leaves --keep out."""
    after = deps or None
    return submit_line(
        "true", priority=opts["priority"], retries=opts["retries"] or None,
        backoff_s=opts["backoff"] if opts["retries"] else None, delay_s=opts["delay"],
        keep_s=opts["keep"] if keep else None,
        after_any=after if opts["any"] else None, after=None if opts["any"] else after)


class JobModel(RuleBasedStateMachine):
    """Random options, exits, cancels, time and crashes (the last batch
    synced or lost). Every acknowledged job is final (or forgotten after its
    --keep) or still live where its state says; memory stays consistent."""

    def __init__(self):
        super().__init__()
        self.h = CoreHarness(slots=2)
        self.acked: list[str] = []
        self.expired: set[str] = set()

    def _observe(self, actions):
        # Highest priority first: what a batch started outranks what it left queued.
        queued = [job.spec.priority for job in self.h.core.queue.values()]
        for start in starts(actions):
            assert start.spec.priority >= max(queued, default=-10**9), (start, queued)
        for data in replies(actions):
            parts = data.decode().split()
            if parts[0] == "OK" and len(parts) == 2 and parts[1].startswith("n1-"):
                self.acked.append(parts[1])

    def _line(self, opts) -> str:
        deps = [self.acked[i] for i in opts["deps"] if i < len(self.acked)]
        return option_line(opts, [d for d in dict.fromkeys(deps) if d in self.h.core.records])

    @rule(opts=OPTIONS)
    def submit(self, opts):
        self._observe(self.h.step(self.h.request(parse(self._line(opts)))))

    @rule(data=st.data(), code=st.sampled_from([0, 0, 1, None]))
    @precondition(lambda self: self.h.core.running)
    def exit(self, data, code):
        job_id = data.draw(st.sampled_from(sorted(self.h.core.running)))
        attempt = self.h.core.running[job_id].attempt
        reason = "timeout" if code is None else None
        if job_id in self.h.core.cancelled_running:
            code, reason = None, "cancelled"
        self._observe(self.h.step(JobExited(job_id, attempt, code, reason)))

    @rule(data=st.data())
    @precondition(lambda self: self.acked)
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(self.acked))
        self._observe(self.h.step(self.h.request(Cancel(job_id))))

    @rule(dt=st.sampled_from([0.1, 1.0, 3.0, 10.0]))
    def tick(self, dt):
        self._observe(self.h.tick(dt))

    @rule(synced=st.booleans(), opts=OPTIONS)
    def crash(self, synced, opts):
        actions = self.h.step(self.h.request(parse(self._line(opts))), sync=synced)
        if synced:
            self._observe(actions)
        self.h.crash()

    @rule(data=st.data())
    @precondition(lambda self: self.acked)
    def status(self, data):
        job_id = data.draw(st.sampled_from(self.acked))
        (reply,) = replies(self.h.step(self.h.request(Status(job_id))))
        assert reply.startswith(f"OK {job_id} ".encode()) or (
            reply.startswith(b"ERR not-found") and self._may_be_forgotten(job_id)), reply

    def _may_be_forgotten(self, job_id: str) -> bool:
        return job_id not in self.h.core.records and job_id in self.acked

    @invariant()
    def dependencies_respected(self):
        """A job past waiting (queued, running or ended by itself) had every
        dependency final, and every afterok one done."""
        records = self.h.core.records
        for record in records.values():
            if record.state in (JobState.WAITING, JobState.SCHEDULED, JobState.CANCELLED):
                continue
            for dep in record.spec.dependencies:
                known = records.get(dep)
                if known is None:
                    continue  # forgotten after it ended (--keep)
                assert known.state.final, f"{record.job_id} is {record.state.value} but {dep} is {known.state.value}"
                if dep in record.spec.after:
                    assert known.state is JobState.DONE, f"{record.job_id} ran after {dep} {known.state.value}"

    @invariant()
    def consistent(self):
        self.h.core.validate_state()

    @invariant()
    def nothing_acknowledged_is_lost(self):
        core = self.h.core
        for job_id in self.acked:
            record = core.records.get(job_id)
            if record is None:
                # Only a finished job is forgotten, and only past its retention.
                assert f"j/{job_id}".encode() not in self.h.store.durable
                self.expired.add(job_id)
                continue
            assert job_id not in self.expired, f"{job_id} came back after it was forgotten"
            s = record.state
            if s.final:
                continue
            if s in (JobState.QUEUED, JobState.RUNNING):
                assert core._held_attempt(job_id) is not None, f"{job_id} is {s.value} but not held"
            elif s is JobState.SCHEDULED:
                assert any(j == job_id for _, _, j in core.due), f"{job_id} scheduled but not due ever"
            elif s is JobState.WAITING:
                assert core.unmet.get(job_id), f"{job_id} waits for nothing"

    def teardown(self):
        h = self.h
        for _ in range(500):
            h.tick(5.0)
            running = dict(h.core.running)
            if not running and not h.core.queue and not h.core.due and not h.core.unmet:
                break
            for job_id, job in running.items():
                reason = "cancelled" if job_id in h.core.cancelled_running else None
                h.step(JobExited(job_id, job.attempt, None if reason else 0, reason))
        for job_id in self.acked:
            record = h.core.records.get(job_id)
            assert record is None or record.state.final, record


TestJobModel = JobModel.TestCase
TestJobModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------------------
# The same across three homes: options, failures, cancels, deliveries, crashes


class PeersModel(ThreePeers):
    """tests/test_handoff.py's three-peer state machine (deliveries, broken
    links, crashes at any point of a batch, restarts, time) with jobs that
    carry options, depend on jobs of any home, fail and are cancelled.
    Nothing acknowledged is lost; a final record never changes; a job past
    waiting had every dependency final (afterok ones done); a failed job
    failed on its last try; in the end every job is final."""

    @rule(data=st.data(), opts=OPTIONS)
    @precondition(lambda self: self.w.live())
    def submit(self, data, opts):
        w = self.w
        name = data.draw(st.sampled_from(w.live()), label="peer")
        acked = sorted(w.acked)
        deps = list(dict.fromkeys(acked[i] for i in opts["deps"] if i < len(acked)))
        line = option_line(opts, deps, keep=False)
        for reply in w._step(name, [w_request(w, line)]):
            parts = reply.decode().split()
            if parts[0] == "OK" and len(parts) == 2:
                w.acked.add(parts[1])

    @rule(data=st.data())
    @precondition(lambda self: any(p.running for p in self.w.peers.values()))
    def fail(self, data):
        w = self.w
        name = data.draw(st.sampled_from([n for n in NAMES_ if w.peers[n].running]), label="peer")
        job_id = data.draw(st.sampled_from(sorted(w.peers[name].running)), label="job")
        run = w.peers[name].running.pop(job_id)
        event = (JobExited(job_id, run.attempt, None, "cancelled") if run.killed
                 else JobExited(job_id, run.attempt, 1, None))
        w._step(name, [event])

    @rule(data=st.data())
    @precondition(lambda self: self.w.acked)
    def cancel(self, data):
        w = self.w
        job_id = data.draw(st.sampled_from(sorted(w.acked)), label="job")
        home = job_id.rsplit("-", 1)[0]
        if w.peers[home].up:
            w._step(home, [w_request(w, f"CANCEL {job_id}")])

    @invariant()
    def invariants(self):
        self._check()

    def _check(self):
        w = self.w
        for peer in w.peers.values():
            if peer.up:
                peer.core.validate_state()
                peer.core.cluster.membership.validate_state()
        not_lost(w)
        finals = self.__dict__.setdefault("finals", {})
        for job_id in sorted(w.acked):
            home = w.peers[job_id.rsplit("-", 1)[0]]
            raw = home.store._durable.get(layout.key(layout.JOB, job_id))
            record = JobRecord.from_wire(layout.decode(raw, "j"))
            if job_id in finals:
                assert raw == finals[job_id], f"final record of {job_id} changed"
            elif record.state.final:
                finals[job_id] = raw
            assert 1 <= record.tries <= record.spec.tries, record
            if record.state is JobState.FAILED:
                assert record.tries == record.spec.tries, f"{job_id} failed with tries left: {record}"
            if record.state in (JobState.WAITING, JobState.CANCELLED):
                continue
            for dep in record.spec.dependencies:
                known = w.home_record(dep)
                assert known is not None and known.state.final, f"{job_id} is {record.state.value}, {dep}: {known}"
                if dep in record.spec.after:
                    assert known.state is JobState.DONE, f"{job_id} ran after {dep} {known.state.value}"

    def teardown(self):
        w = getattr(self, "w", None)
        if w is None:
            return
        for name in NAMES_:
            if not w.peers[name].up:
                w.restart(name)
        for _ in range(3000):
            if all(w.is_final(job_id) for job_id in w.acked):
                break
            w.deliver_queued()
            for name in NAMES_:
                for job_id in sorted(w.peers[name].running):
                    w.finish(name, job_id)
            w.advance(0.05, deliver=True)
        self._check()
        open_jobs = {j: w.home_record(j) for j in sorted(w.acked) if not w.is_final(j)}
        assert not open_jobs, f"not final: {open_jobs}\n" + "\n".join(w.log[-40:])


TestPeersModel = PeersModel.TestCase
TestPeersModel.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_retention_counts_from_the_homes_clock_not_the_executors():
    """An executor whose wall clock is ten minutes behind reports a
    `finished_at` ten minutes ago: a `--keep 60` job must still be kept 60 s
    from when its home learned the result, not forgotten at once."""
    h = CoreHarness(slots=1)
    (reply,) = replies(h.step(h.request(parse_command(b"SUBMIT --keep 60 true", command_bytes_max=4096,
                                                      timeout_max_s=3600.0, wait_max_s=60.0, list_max=100))))
    job = reply.decode().split()[1]
    late = JobResult(job_id=job, attempt=1, executor="n1", exit_code=0, reason=None, stdout=b"", stderr=b"",
                     truncated=False, finished_at=h.now - 600.0, started_at=h.now - 601.0)
    assert h.core._accept_result(late) is True
    h.step()
    h.tick(1.0)
    assert status(h, job).startswith(f"OK {job} done")
    h.tick(59.5)
    assert status(h, job).startswith("ERR not-found")
