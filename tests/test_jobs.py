"""The job state machine's table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.core.jobs import (
    FINAL_STATES,
    TRANSITIONS,
    HeldJob,
    IllegalTransition,
    JobEvent,
    JobRecord,
    JobState,
    next_state,
)
from executor.core.protocol import JOB_STATE_NAMES, JobSpec


def test_final_states_have_no_way_out():
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == {}
        for event in JobEvent:
            with pytest.raises(IllegalTransition):
                next_state(state, event)


def test_every_state_and_event_is_in_the_table():
    assert set(TRANSITIONS) == set(JobState)
    ends_of_a_wait = {JobEvent.RELEASE, JobEvent.DEFER, JobEvent.DUE}
    for state in (JobState.QUEUED, JobState.RUNNING):
        assert set(TRANSITIONS[state]) == set(JobEvent) - ends_of_a_wait
    # Not held anywhere, a waiting or scheduled job can only end its wait or be cancelled.
    assert set(TRANSITIONS[JobState.WAITING]) == {JobEvent.RELEASE, JobEvent.DEFER, JobEvent.CANCEL}
    assert set(TRANSITIONS[JobState.SCHEDULED]) == {JobEvent.DUE, JobEvent.CANCEL}
    assert TRANSITIONS[JobState.RUNNING][JobEvent.RETRY] is JobState.SCHEDULED


def test_the_protocol_names_every_state():
    assert set(JOB_STATE_NAMES) == {state.value for state in JobState}


@given(st.lists(st.sampled_from(list(JobEvent)), max_size=30))
def test_any_event_sequence_follows_the_table_or_is_refused(events):
    record = JobRecord("n1-1", JobSpec("sleep"), 0.0)
    for event in events:
        before = record.state
        if event in TRANSITIONS[before]:
            record.apply(event)
            assert record.state is TRANSITIONS[before][event]
        else:
            with pytest.raises(IllegalTransition):
                record.apply(event)
            assert record.state is before  # a refused transition changes nothing
    assert record.state.final or record.state in (JobState.QUEUED, JobState.RUNNING, JobState.SCHEDULED)


@given(st.sampled_from(list(JobState)), st.integers(1, 5), st.integers(0, 5), st.booleans())
def test_records_round_trip(state, attempt, moves, truncated):
    record = JobRecord("a.b-c-7", JobSpec("sh", "echo 'x y'", 0, 2.5), 12.5, state=state, attempt=attempt,
                       floor=attempt, moves=moves, executor="n2", exit_code=3, reason="timeout",
                       truncated=truncated)
    assert JobRecord.from_wire(record.to_wire()) == record


@given(st.sampled_from(list(JobState)), st.integers(-1000, 1000), st.integers(0, 100), st.integers(1, 101),
       st.none() | st.floats(0, 2**34), st.lists(st.tuples(st.sampled_from(["A", "B_2"]), st.text(max_size=5)),
                                              max_size=3))
def test_records_with_options_round_trip(state, priority, retries, tries, due_at, env):
    spec = JobSpec("sh", "true", 0, None, priority, tuple(env), "/tmp", retries, 1.5, 60.0, ("n2-1",), ("n3-4", "n1-2"))
    record = JobRecord("n1-9", spec, 12.5, state=state, tries=tries, due_at=due_at)
    assert JobRecord.from_wire(record.to_wire()) == record
    held = HeldJob("n1-9", "n1", spec, 2, 1, 12.5)
    assert HeldJob.from_wire(held.to_wire()) == held


def test_a_plain_record_stores_no_option_keys():
    record = JobRecord("n1-1", JobSpec("sh", "true"), 1.0)
    assert not {"o", "try", "due"} & set(record.to_wire())
