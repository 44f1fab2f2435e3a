"""The peer core alone (one peer, no cluster): replies, limits, and what a
restart finds after a crash at each step of a job's life."""

from __future__ import annotations

import dataclasses

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from executor.config import Config
from executor.core import ClientClosed, JobExited, KillJob, ReplyResult, read_result
from executor.core.jobs import JobState
from executor.core.protocol import Cancel, JobSpec, ListJobs, Result, Status, Submit, Wait
from tests.conftest import CoreHarness, replies, starts

SH = JobSpec(kind="sh", command="echo hi")


def submit(h: CoreHarness, spec=SH, sync=True):
    actions = h.step(h.request(Submit(spec)), sync=sync)
    (reply,) = replies(actions)
    return reply.decode().split()[1], actions


def test_submit_is_acknowledged_with_writes_in_the_same_batch(harness):
    harness.core.handle(harness.request(Submit(SH)), harness.now)
    writes, actions = harness.core.take()
    keys = {k for k, _ in writes}
    assert b"j/n1-1" in keys and b"q/n1-1" in keys and b"m/seq" in keys
    assert replies(actions) == [b"OK n1-1\n"]


def test_job_runs_and_result_is_kept(harness):
    job, actions = submit(harness)
    (start,) = starts(actions)
    assert start.job_id == job and start.attempt == 1
    harness.step(JobExited(job, 1, 0, None, b"hi\n", b""))
    (line,) = replies(harness.step(harness.request(Status(job))))
    assert line.startswith(b"OK n1-1 done attempt=1 executor=n1 exit=0")
    (action,) = harness.step(harness.request(Result(job)))
    assert isinstance(action, ReplyResult)
    reply = read_result(harness.store, action.job_id)
    assert reply.startswith(b"OK n1-1 done exit=0 stdout=3 stderr=0") and reply.endswith(b"\nhi\n\n")


def test_result_header_and_body_come_from_one_read_even_when_the_record_is_forgotten_meanwhile():
    # records_retained_max = 1: finishing a second job forgets the first, in
    # the same batch as a RESULT of the first. The reply is read after that
    # batch's sync, from one read: a clear not-found, never a header whose body
    # is gone (which desynced the client's stream).
    h = CoreHarness(config=dataclasses.replace(Config.simulation(), records_retained_max=1))
    first, _ = submit(h)
    h.step(JobExited(first, 1, 0, None, b"first\n", b""))
    second, _ = submit(h)
    actions = h.step(h.request(Result(first)), JobExited(second, 1, 0, None, b"second\n", b""))
    (action,) = [a for a in actions if isinstance(a, ReplyResult)]
    assert read_result(h.store, action.job_id).startswith(b"ERR not-found job n1-1 was forgotten")
    (action,) = h.step(h.request(Result(second)))
    assert read_result(h.store, action.job_id) == (
        b"OK n1-2 done exit=0 stdout=7 stderr=0 attempt=1 executor=n1 truncated=no\nsecond\n\n")


def test_result_before_finish_is_an_error(harness):
    job, _ = submit(harness)
    (line,) = replies(harness.step(harness.request(Result(job))))
    assert line.startswith(b"ERR not-finished")


def test_slots_bound_running_jobs_oldest_first():
    h = CoreHarness(slots=2)
    started = []
    for _ in range(5):
        _, actions = submit(h)
        started += [s.job_id for s in starts(actions)]
    assert started == ["n1-1", "n1-2"]
    actions = h.step(JobExited("n1-1", 1, 0, None))
    assert [s.job_id for s in starts(actions)] == ["n1-3"]


def test_busy_bound_rejects_and_stores_nothing():
    h = CoreHarness(slots=1, config=Config.simulation(queue_jobs_max=2))
    for _ in range(3):  # one runs, two queue
        submit(h)
    before = dict(h.store._durable)
    (line,) = replies(h.step(h.request(Submit(SH))))
    assert line.startswith(b"ERR busy")
    assert h.store._durable == before
    assert h.core.counters.busy_rejections == 1


def test_unknown_and_foreign_ids(harness):
    (line,) = replies(harness.step(harness.request(Status("n1-7"))))
    assert line.startswith(b"ERR not-found")
    (line,) = replies(harness.step(harness.request(Status("other-7"))))
    assert line.startswith(b"ERR not-home") and b"other" in line


def test_wait_answers_on_finish_or_times_out(harness):
    job, _ = submit(harness)
    assert replies(harness.step(harness.request(Wait(job, 5.0)))) == []
    (line,) = replies(harness.step(JobExited(job, 1, 0, None)))
    assert line.startswith(b"OK n1-1 done")
    job2, _ = submit(harness)
    harness.step(harness.request(Wait(job2, 1.0)))
    assert replies(harness.tick(0.5)) == []
    (line,) = replies(harness.tick(0.6))
    assert line == b"ERR timeout job n1-2 is still running\n"


def test_closed_client_drops_its_waiters(harness):
    job, _ = submit(harness)
    harness.step(harness.request(Wait(job, 5.0)))
    harness.step(ClientClosed(0))
    assert replies(harness.step(JobExited(job, 1, 0, None))) == []


def test_cancel_running_kills_and_frees_slot_only_on_exit(harness):
    job, _ = submit(harness)
    job2, _ = submit(harness)
    actions = harness.step(harness.request(Cancel(job)))
    assert any(isinstance(a, KillJob) for a in actions)
    assert starts(actions) == []  # the killed job still holds the slot
    actions = harness.step(JobExited(job, 1, None, "cancelled"))
    assert [s.job_id for s in starts(actions)] == [job2]
    (line,) = replies(harness.step(harness.request(Status(job))))
    assert b"cancelled" in line


def test_cancel_survives_restart(harness):
    submit(harness)
    job, _ = submit(harness)
    harness.step(harness.request(Cancel(job)))
    harness.crash()
    assert harness.core.records[job].state is JobState.CANCELLED
    assert job not in harness.core.queue


def test_list_latest_first(harness):
    for _ in range(3):
        submit(harness)
    (line,) = replies(harness.step(harness.request(ListJobs(2))))
    assert line.splitlines()[0] == b"OK 2 jobs"
    assert line.splitlines()[1].startswith(b"n1-3 ")


# --- crash points ---------------------------------------------------------


def test_crash_before_the_submit_batch_is_synced_loses_only_the_unacked_job(harness):
    job, actions = submit(harness, sync=False)
    # The edge never carried out the actions: no OK went out.
    harness.crash()
    assert job not in harness.core.records
    job2, _ = submit(harness)
    assert job2 == job  # the id was never given to anyone, so it may be reused


def test_crash_while_running_reruns_as_next_attempt(harness):
    job, _ = submit(harness)
    harness.crash()
    record = harness.core.records[job]
    assert record.state is JobState.QUEUED and record.attempt == 2
    (start,) = starts(harness.step(harness.request(ListJobs(1))))
    assert start.attempt == 2
    harness.step(JobExited(job, 2, 0, None))
    assert harness.core.records[job].state is JobState.DONE


def test_crash_after_exit_before_sync_reruns(harness):
    job, _ = submit(harness)
    harness.step(JobExited(job, 1, 0, None), sync=False)
    harness.crash()
    assert harness.core.records[job].state is JobState.QUEUED


def test_crash_after_result_synced_keeps_it(harness):
    job, _ = submit(harness)
    harness.step(JobExited(job, 1, 0, None, b"out", b""))
    harness.crash()
    record = harness.core.records[job]
    assert record.state is JobState.DONE and record.stdout_bytes == 3
    assert not harness.core.queue and not harness.core.running


def test_stale_exit_of_an_old_attempt_is_ignored(harness):
    job, _ = submit(harness)
    harness.crash()
    harness.step(harness.request(ListJobs(1)))  # starts attempt 2
    harness.step(JobExited(job, 1, 0, None))
    assert harness.core.records[job].state is JobState.RUNNING


# --- the whole life, with crashes anywhere ---------------------------------


class SinglePeer(RuleBasedStateMachine):
    """Random submits, exits, cancels and crashes (with the last batch synced
    or lost). Nothing acknowledged is lost; a final state never changes; at
    most `slots` jobs run."""

    def __init__(self):
        super().__init__()
        self.h = CoreHarness(slots=2)
        self.acked: set[str] = set()
        self.final: dict[str, tuple] = {}

    def _observe(self, actions):
        for data in replies(actions):
            parts = data.decode().split()
            if parts[0] == "OK" and len(parts) == 2 and parts[1].startswith("n1-"):
                self.acked.add(parts[1])

    @rule(ms=st.integers(0, 5))
    def submit(self, ms):
        self._observe(self.h.step(self.h.request(Submit(JobSpec("sleep", sleep_ms=ms)))))

    @rule(data=st.data(), code=st.sampled_from([0, 0, 1]))
    @precondition(lambda self: self.h.core.running)
    def exit(self, data, code):
        job_id = data.draw(st.sampled_from(sorted(self.h.core.running)))
        attempt = self.h.core.running[job_id].attempt
        self._observe(self.h.step(JobExited(job_id, attempt, code, None)))

    @rule(data=st.data())
    @precondition(lambda self: self.acked)
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.acked)))
        self._observe(self.h.step(self.h.request(Cancel(job_id))))

    @rule(synced=st.booleans(), ms=st.integers(0, 5))
    def crash(self, synced, ms):
        # A submission in flight when the peer dies: acknowledged only if synced.
        actions = self.h.step(self.h.request(Submit(JobSpec("sleep", sleep_ms=ms))), sync=synced)
        if synced:
            self._observe(actions)
        self.h.crash()

    @invariant()
    def nothing_acknowledged_is_lost(self):
        core = self.h.core
        for job_id in self.acked:
            record = core.records[job_id]
            held = job_id in core.queue or job_id in core.running
            assert record.state.final or held, f"{job_id} is {record.state} but nowhere"

    @invariant()
    def final_states_never_change(self):
        for job_id, record in self.h.core.records.items():
            snapshot = (record.state, record.exit_code, record.attempt)
            if job_id in self.final:
                assert self.final[job_id] == snapshot
            elif record.state.final and job_id in self.acked:
                durable = self.h.store._durable.get(f"j/{job_id}".encode())
                if durable is not None and b"queued" not in durable and b"running" not in durable:
                    self.final[job_id] = snapshot

    @invariant()
    def slots_respected(self):
        assert len(self.h.core.running) <= 2

    @invariant()
    def memory_is_consistent(self):
        self.h.core.validate_state()

    def teardown(self):
        # Liveness: with no more faults, everything acknowledged finishes.
        for _ in range(1000):
            self.h.tick()
            running = dict(self.h.core.running)
            if not running and not self.h.core.queue:
                break
            for job_id, job in running.items():
                self.h.step(JobExited(job_id, job.attempt, 0, None))
        for job_id in self.acked:
            assert self.h.core.records[job_id].state.final


TestSinglePeer = SinglePeer.TestCase
TestSinglePeer.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_records_round_trip_through_the_store(harness):
    job, _ = submit(harness, spec=dataclasses.replace(SH, timeout_s=2.5))
    harness.crash()
    assert harness.core.records[job].spec.timeout_s == 2.5


def test_finished_records_past_the_bound_are_forgotten_oldest_first():
    h = CoreHarness(slots=1, config=Config.simulation(records_retained_max=2))
    jobs = []
    for _ in range(4):
        job, _ = submit(h)
        jobs.append(job)
        h.step(JobExited(job, 1, 0, None, b"out", b""))
    assert list(h.core.records) == jobs[2:]
    assert f"j/{jobs[0]}".encode() not in h.store.durable and f"o/{jobs[0]}".encode() not in h.store.durable
    (line,) = replies(h.step(h.request(Status(jobs[0]))))
    assert line.startswith(b"ERR not-found") and b"forgotten" in line
    h.crash()  # the bound and the order survive a restart
    job, _ = submit(h)
    assert job == "n1-5"  # ids are never reused
    h.step(JobExited(job, 1, 0, None))
    assert list(h.core.records) == [jobs[3], job]
