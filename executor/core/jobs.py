"""The home peer's job state machine, as data.

Rule 1 (after h11): everything that decides which state a job may move to lives
in `TRANSITIONS` below. A job's *home* — the peer it was submitted to — owns its
record: the spec, the state, the attempt number, where it is (the executor),
and the first accepted result. Every other peer only ever *holds* a copy to run
(`HeldJob`), and reports back to the home.

Theory of operation
-------------------
* A record is born QUEUED — or WAITING for its dependencies, or SCHEDULED
  until its due time — and is acknowledged to the client only once it is
  durable (group commit; see `executor/core/`). Only a QUEUED or RUNNING job
  is held anywhere; WAITING and SCHEDULED ones are records at home only.
* RELEASE (or DEFER, when not yet due) ends a wait; DUE ends a schedule.
* RETRY: a try failed and tries are left; the job is SCHEDULED after its
  back-off, as a new attempt (the failed run's result is fenced off).
* START moves it to RUNNING; REQUEUE moves a running job back to QUEUED — after
  a restart of its executor, or when the home re-issues it because its executor
  stayed dead past the grace period. Both bump the attempt number; a result
  from an attempt older than the home's `floor` is ignored.
* FINISH (done or failed) and CANCEL are final. A final record never changes
  again: a second result for the same job is acknowledged (so its sender stops
  resending) and dropped, which is how "exactly one visible result" holds
  although execution is at-least-once.
* A result may arrive while the home still believes the job is QUEUED (the
  executor's "started" report was overtaken, or the executor restarted), so
  FINISH is legal from QUEUED too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from sys import intern

from executor.core.spec import JobSpec, spec_from_wire


class JobState(enum.Enum):
    SCHEDULED = "scheduled"  # due later: --delay/--at, or a retry's back-off
    WAITING = "waiting"  # for its dependencies (--after, --after-any)
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
_STATE_OF = {state.value: state for state in JobState}  # a dict lookup: 20x cheaper than JobState(value)


class JobEvent(enum.Enum):
    RELEASE = "release"  # the dependencies are satisfied, and it is due
    DEFER = "defer"  # the dependencies are satisfied, but it is not due yet
    DUE = "due"  # its due time came
    RETRY = "retry"  # a try failed and tries are left: scheduled after the back-off
    START = "start"
    REQUEUE = "requeue"
    MOVE = "move"  # the job changed executor, still queued
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"


S, W, Q, R = JobState.SCHEDULED, JobState.WAITING, JobState.QUEUED, JobState.RUNNING
TRANSITIONS: dict[JobState, dict[JobEvent, JobState]] = {
    W: {
        JobEvent.RELEASE: Q,
        JobEvent.DEFER: S,
        JobEvent.CANCEL: JobState.CANCELLED,  # by a client, or an afterok dependency that did not succeed
    },
    S: {
        JobEvent.DUE: Q,
        JobEvent.CANCEL: JobState.CANCELLED,
    },
    Q: {
        JobEvent.START: R,
        JobEvent.REQUEUE: Q,
        JobEvent.MOVE: Q,
        JobEvent.RETRY: S,
        JobEvent.SUCCEED: JobState.DONE,
        JobEvent.FAIL: JobState.FAILED,
        JobEvent.CANCEL: JobState.CANCELLED,
    },
    R: {
        JobEvent.START: R,  # a newer attempt started elsewhere
        JobEvent.REQUEUE: Q,
        JobEvent.MOVE: Q,
        JobEvent.RETRY: S,
        JobEvent.SUCCEED: JobState.DONE,
        JobEvent.FAIL: JobState.FAILED,
        JobEvent.CANCEL: JobState.CANCELLED,
    },
    JobState.DONE: {},
    JobState.FAILED: {},
    JobState.CANCELLED: {},
}


class IllegalTransition(Exception):
    """Our bug: the core asked for a transition the table forbids."""


def next_state(state: JobState, event: JobEvent) -> JobState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"{event.value} is not allowed in state {state.value}") from None


@dataclass(slots=True)
class JobRecord:
    """The home's record of one job (persisted under j/<id>)."""

    job_id: str
    spec: JobSpec
    submitted_at: float
    state: JobState = JobState.QUEUED
    attempt: int = 1
    floor: int = 1  # results of attempts below this are ignored
    moves: int = 0  # handoffs within the current attempt: orders location reports
    executor: str = ""
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    truncated: bool = False
    tries: int = 1  # which try this is (1 .. spec.retries + 1)
    due_at: float | None = None  # wall time a SCHEDULED job becomes QUEUED
    met: tuple[str, ...] = ()  # dependencies met while others were not (WAITING)
    final_at: float | None = None  # when this home made it final, on its clock (retention counts from it)

    def apply(self, event: JobEvent) -> None:
        self.state = next_state(self.state, event)

    def to_wire(self) -> dict:
        spec = self.spec
        return {
            "id": self.job_id, "k": spec.kind, "c": spec.command, "ms": spec.sleep_ms,
            "to": spec.timeout_s, "t": self.submitted_at, "s": self.state.value,
            "a": self.attempt, "f": self.floor, "mv": self.moves, "x": self.executor,
            "e": self.exit_code, "r": self.reason, "ts": self.started_at,
            "tf": self.finished_at, "no": self.stdout_bytes, "ne": self.stderr_bytes,
            "tr": self.truncated,
        } | _options(spec, self.tries, self.due_at, self.met, self.final_at)

    @classmethod
    def from_wire(cls, d: dict) -> JobRecord:
        # Positional: recovery builds one per record kept (hot at restart).
        # Peer ids and kinds come from a handful of values: one string each,
        # not one per record (as when the record was made live).
        return cls(
            d["id"], spec_from_wire(intern(d["k"]), d["c"], d["ms"], d["to"], d.get("o")), d["t"], _STATE_OF[d["s"]],
            d["a"], d["f"], d["mv"], intern(d["x"]), d["e"], d["r"], d["ts"], d["tf"], d["no"], d["ne"], d["tr"],
            d.get("try", 1), d.get("due"), tuple(d.get("met", ())), d.get("fa"),
        )


@dataclass(slots=True)
class HeldJob:
    """A job this peer holds to run (persisted under q/<id>), whoever its home is."""

    job_id: str
    home: str
    spec: JobSpec
    attempt: int
    moves: int
    submitted_at: float
    running: bool = False
    started_at: float | None = field(default=None)

    def to_wire(self) -> dict:
        spec = self.spec
        return {
            "id": self.job_id, "h": self.home, "k": spec.kind, "c": spec.command,
            "ms": spec.sleep_ms, "to": spec.timeout_s, "a": self.attempt,
            "mv": self.moves, "t": self.submitted_at, "run": self.running,
        } | _options(spec, 1, None, (), None)

    @classmethod
    def from_wire(cls, d: dict) -> HeldJob:
        return cls(d["id"], intern(d["h"]), spec_from_wire(intern(d["k"]), d["c"], d["ms"], d["to"], d.get("o")),
                   d["a"], d["mv"], d["t"], d["run"])


def _options(spec: JobSpec, tries: int, due_at: float | None, met: tuple[str, ...],
             final_at: float | None) -> dict:
    """The keys a plain job does without: its stored bytes stay as they were."""
    out = {}
    options = spec.options_wire()
    if options is not None:
        out["o"] = options
    if tries != 1:
        out["try"] = tries
    if due_at is not None:
        out["due"] = due_at
    if met:
        out["met"] = list(met)
    if final_at is not None:
        out["fa"] = final_at
    return out
