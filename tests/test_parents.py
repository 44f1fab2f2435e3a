"""Arrays and periodic jobs on one core (executor/core/parents.py): children
made in the batch that counts them, the %M cap, the parent's STATUS, WAIT and
CANCEL, and what a crash at each step does."""

from __future__ import annotations

import pytest

from executor.config import Config
from executor.core import JobExited
from executor.core.errors import ClientError
from executor.core.protocol import Cancel, ListJobs, Result, Status, Wait, parse_command
from tests.conftest import CoreHarness, replies, starts

LIMITS = dict(command_bytes_max=4096, timeout_max_s=3600.0, wait_max_s=60.0, list_max=1000)


def submit_line(h: CoreHarness, line: str, sync: bool = True):
    actions = h.step(h.request(parse_command(line.encode(), **LIMITS)), sync=sync)
    (reply,) = replies(actions)
    return reply.decode().split()[1], actions


def ask(h: CoreHarness, command) -> str:
    (reply,) = replies(h.step(h.request(command)))
    return reply.decode()


def finish(h: CoreHarness, job_id: str, code: int = 0):
    return h.step(JobExited(job_id, 1, code, None, b"", b""))


def test_an_array_makes_its_elements_which_run_with_their_index_in_the_id():
    h = CoreHarness(slots=2)
    array, actions = submit_line(h, "SUBMIT --array 1-3 echo $PEERJOBS_ARRAY_INDEX")
    assert array == "n1-1"
    assert [s.job_id for s in starts(actions)] == ["n1-1.1", "n1-1.2"]
    assert ask(h, Status(array)).startswith("OK n1-1 running array=1-3 elements=3 pending=0 queued=1 running=2")
    for element in ("n1-1.1", "n1-1.2"):
        finish(h, element)
    assert ask(h, Status(array)).startswith("OK n1-1 running array=1-3 elements=3 pending=0 running=1 done=2")
    finish(h, "n1-1.3")
    assert ask(h, Status(array)).startswith("OK n1-1 done array=1-3 elements=3 pending=0 done=3")
    assert ask(h, Status("n1-1.2")).startswith("OK n1-1.2 done")
    assert ask(h, ListJobs(10, array="n1-1")).startswith("OK 3 jobs\nn1-1.3 done")


def test_a_cap_keeps_at_most_m_elements_live_and_wait_answers_when_all_are_final():
    h = CoreHarness(slots=4)
    array, actions = submit_line(h, "SUBMIT --array 0-4%2 true")
    assert [s.job_id for s in starts(actions)] == ["n1-1.0", "n1-1.1"]  # 4 slots, but a cap of 2
    wait = h.request(Wait(array, None))
    assert replies(h.step(wait)) == []
    actions = finish(h, "n1-1.0", code=3)
    assert [s.job_id for s in starts(actions)] == ["n1-1.2"]
    for element in ("n1-1.1", "n1-1.2", "n1-1.3"):
        actions = finish(h, element)
        assert not replies(actions)
    (reply,) = replies(finish(h, "n1-1.4"))
    assert reply.startswith(b"OK n1-1 failed array=0-4%2 elements=5 pending=0 done=4 failed=1")


def test_cancel_of_an_array_cancels_what_has_not_finished_and_makes_no_more():
    h = CoreHarness(slots=1)
    array, _ = submit_line(h, "SUBMIT --array 1-10%3 true")
    finish(h, "n1-1.1")
    assert ask(h, Cancel(array)) == "OK n1-1 cancelled\n"
    status = ask(h, Status(array))
    assert status.startswith("OK n1-1 cancelled array=1-10%3 elements=10 pending=6 done=1 cancelled=3"), status
    assert ask(h, Status("n1-1.5")).startswith("ERR not-found")
    assert ask(h, Cancel(array)).startswith("ERR finished")


def test_an_element_made_in_a_batch_that_was_never_synced_is_made_again_once():
    h = CoreHarness(slots=1)
    array, _ = submit_line(h, "SUBMIT --array 1-4%1 true")
    finish(h, "n1-1.1")
    h.step(JobExited("n1-1.2", 1, 0, None, b"", b""), sync=False)  # makes n1-1.3, lost in the crash
    h.crash()
    # Element 2 runs again (its result was not durable); 3 is made once it ends.
    actions = h.tick()
    assert [s.job_id for s in starts(actions)] == ["n1-1.2"]
    assert ask(h, Status(array)).startswith("OK n1-1 running array=1-4%1 elements=4 pending=2 running=1 done=1")
    actions = h.step(JobExited("n1-1.2", 2, 0, None, b"", b""))
    assert [s.job_id for s in starts(actions)] == ["n1-1.3"]
    h.core.validate_state()


def test_result_of_the_parent_asks_for_an_element():
    h = CoreHarness()
    array, _ = submit_line(h, "SUBMIT --array 1-2 true")
    assert ask(h, Result(array)).startswith("ERR bad-request n1-1 is an array or a periodic job")


def test_a_periodic_job_makes_one_run_per_period_and_one_late_run_after_a_long_outage():
    h = CoreHarness(slots=1)
    parent, actions = submit_line(h, "SUBMIT --every 10 true")
    assert [s.job_id for s in starts(actions)] == ["n1-1.1"]
    finish(h, "n1-1.1")
    assert not starts(h.tick(5.0))
    assert [s.job_id for s in starts(h.tick(5.0))] == ["n1-1.2"]
    finish(h, "n1-1.2")
    assert ask(h, Status(parent)).startswith("OK n1-1 scheduled every=10 runs=2 last_run=n1-1.2 next=1020.000 done=2")
    # Down for 35 s, through three due times: one run, late, at the restart;
    # the next on the grid after it.
    h.now += 35.0
    h.crash()
    assert [s.job_id for s in starts(h.tick())] == ["n1-1.3"]
    finish(h, "n1-1.3")
    assert ask(h, Status(parent)).startswith("OK n1-1 scheduled every=10 runs=3 last_run=n1-1.3 next=1050.000")
    assert not starts(h.tick(4.0))
    assert [s.job_id for s in starts(h.tick(1.0))] == ["n1-1.4"]


def test_a_periodic_run_made_but_not_synced_is_made_once_after_the_restart():
    h = CoreHarness(slots=1)
    parent, _ = submit_line(h, "SUBMIT --every 10 true")
    finish(h, "n1-1.1")
    h.now += 10.0
    h.step(h.request(Status(parent)), sync=False)  # the tick's batch (run 2) is lost
    h.crash()
    actions = h.tick()
    assert [s.job_id for s in starts(actions)] == ["n1-1.2"]
    assert ask(h, Status(parent)).startswith("OK n1-1 scheduled every=10 runs=2")


def test_cancel_of_a_periodic_job_stops_it_and_its_live_run():
    h = CoreHarness(slots=1)
    parent, _ = submit_line(h, "SUBMIT --every 10 sleep 100")
    assert ask(h, Cancel(parent)) == "OK n1-1 cancelled\n"
    assert ask(h, Status("n1-1.1")).startswith("OK n1-1.1 cancelled")
    assert not starts(h.tick(30.0))
    assert ask(h, Status(parent)).startswith("OK n1-1 cancelled every=10 runs=1")


def test_a_job_may_wait_for_an_array():
    h = CoreHarness(slots=2)
    submit_line(h, "SUBMIT --array 1-2 true")
    dependent, _ = submit_line(h, "SUBMIT --after n1-1 echo after")
    assert ask(h, Status(dependent)).startswith("OK n1-2 waiting")
    finish(h, "n1-1.1")
    actions = finish(h, "n1-1.2")
    assert [s.job_id for s in starts(actions)] == ["n1-2"]


@pytest.mark.parametrize("line, expected", [
    ("SUBMIT --array 5-1 true", "--array 5-1: the last index is below the first"),
    ("SUBMIT --array 1-20000 true", "more than 10000 elements"),
    ("SUBMIT --array 1-5%0 true", "--array's %M"),
    ("SUBMIT --array x true", "--array takes A-B[%M]"),
    ("SUBMIT --array 1-2 --every 5 true", "give one of --array, --every and --cron"),
    ("SUBMIT --every 5 --cron '* * * * *' true", "give one of --array, --every and --cron"),
    ("SUBMIT --cron '61 * * * *' true", "--cron '61 * * * *'"),
    ("SUBMIT --cron '* * * *' true", "Wrong number of fields"),
    ("SUBMIT --cron '* * * * * true", "the value's ' is never closed"),
    ("SUBMIT --every 0.1 true", "--every"),
])
def test_malformed_arrays_and_periods_are_refused_naming_the_option(line, expected):
    with pytest.raises(ClientError) as caught:
        parse_command(line.encode(), **LIMITS)
    assert caught.value.code.value == "bad-request" and expected in caught.value.message


def test_an_array_larger_than_the_queue_bound_without_a_cap_is_busy_and_stores_nothing():
    import dataclasses

    h = CoreHarness(config=dataclasses.replace(Config.simulation(), queue_jobs_max=5))
    reply = replies(h.step(h.request(parse_command(b"SUBMIT --array 1-6 true", **LIMITS))))[0]
    assert reply.startswith(b"ERR busy") and h.core.next_seq == 1
    job, _ = submit_line(h, "SUBMIT --array 1-6%2 true")
    assert job == "n1-1"


def test_a_cron_job_runs_at_each_match_in_utc_and_once_late_after_an_outage():
    h = CoreHarness(slots=1)
    h.now = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC: on a 5-minute boundary
    parent, actions = submit_line(h, "SUBMIT --cron '*/5 * * * *' true")
    assert not starts(actions)  # the first match is the next one, not now
    assert ask(h, Status(parent)).startswith("OK n1-1 scheduled cron=*/5_*_*_*_* runs=0 next=1800000300.000")
    assert [s.job_id for s in starts(h.tick(300.0))] == ["n1-1.1"]
    finish(h, "n1-1.1")
    h.now += 1000.0  # down through three matches
    h.crash()
    assert [s.job_id for s in starts(h.tick())] == ["n1-1.2"]
    assert ask(h, Status(parent)).startswith("OK n1-1 scheduled cron=*/5_*_*_*_* runs=2 last_run=n1-1.2 next=1800001500.000")


def test_an_element_not_made_yet_is_named_as_such_and_a_wait_on_the_array_times_out_cleanly():
    h = CoreHarness(slots=1)
    array, _ = submit_line(h, "SUBMIT --array 1-5%1 sleep 100")
    assert ask(h, Status("n1-1.4")).startswith("ERR not-found job n1-1.4 is not made yet: n1-1 makes its jobs")
    assert ask(h, Status("n1-1.9")).startswith("ERR not-found no job n1-1.9")  # beyond the array
    wait = h.request(Wait(array, 1.0))
    assert replies(h.step(wait)) == []
    (reply,) = replies(h.tick(2.0))
    assert reply == b"ERR timeout job n1-1 is still running\n"
    h.core.validate_state()
