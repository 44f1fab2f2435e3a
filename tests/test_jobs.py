"""The job state machine's table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.core.jobs import FINAL_STATES, TRANSITIONS, IllegalTransition, JobEvent, JobRecord, JobState, next_state
from executor.core.protocol import JobSpec


def test_final_states_have_no_way_out():
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == {}
        for event in JobEvent:
            with pytest.raises(IllegalTransition):
                next_state(state, event)


def test_every_state_and_event_is_in_the_table():
    assert set(TRANSITIONS) == set(JobState)
    for state in (JobState.QUEUED, JobState.RUNNING):
        assert set(TRANSITIONS[state]) == set(JobEvent)


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
    assert record.state.final or record.state in (JobState.QUEUED, JobState.RUNNING)


@given(st.sampled_from(list(JobState)), st.integers(1, 5), st.integers(0, 5), st.booleans())
def test_records_round_trip(state, attempt, moves, truncated):
    record = JobRecord("a.b-c-7", JobSpec("sh", "echo 'x y'", 0, 2.5), 12.5, state=state, attempt=attempt,
                       floor=attempt, moves=moves, executor="n2", exit_code=3, reason="timeout",
                       truncated=truncated)
    assert JobRecord.from_wire(record.to_wire()) == record
