"""When a job may run, and how long it is remembered: dependencies
(WAITING), due times (SCHEDULED: --delay, --at, a retry's back-off), retries,
and retention. A mixin of `PeerCore`; no I/O.

All of it is the home's business: only a QUEUED or RUNNING job is ever held,
so executors know nothing of any of this. Every due time is on the wall
clock, because it must survive a restart (a monotonic clock restarts with the
process): a wall-clock step forward makes due jobs run early, a step back
makes them late; nothing runs twice either way (docs/cluster.md, the job
model). Memory holds only indexes rebuilt from the records at restart:
a heap of due times, a heap of expiries, and for each waiting job the
dependencies still unmet.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from executor.core.errors import ClientError, ErrorCode
from executor.core.ids import parent_of, split_job_id
from executor.core.jobs import JobEvent, JobRecord, JobState
from executor.core.messages import (
    CancelJob,
    DependencyQuery,
    DependencyReply,
    JobResult,
)
from executor.core.spec import Submit
from storage import layout

_UNKNOWN = "unknown"  # a DependencyReply's state for an id the home has no record of
_FINAL_NAMES = frozenset({JobState.DONE.value, JobState.FAILED.value, JobState.CANCELLED.value})


class ScheduleMixin:
    def _init_schedule(self) -> None:
        self.due: list[tuple[float, int, str]] = []  # (due wall time, seq, job); stale entries skipped when popped
        self.scheduled: dict[str, float] = {}  # SCHEDULED job -> its due time: what `due` holds that is current
        self.expiries: list[tuple[float, int, str]] = []  # (forget at, n, job) of final records
        self._tiebreak = itertools.count()  # orders equal times in the heaps without comparing ids
        self.unmet: dict[str, dict[str, None]] = {}  # WAITING job -> dependencies not yet final (ordered)
        self.dependents: dict[str, list[str]] = {}  # dependency -> WAITING jobs here that wait for it
        self.next_dependency_poll_at = self._now
        # Jobs released (made QUEUED by a dependency, a due time, a retry)
        # and not yet started or moved: their start waits for its batch's sync.
        self._start_after_sync: dict[str, bool] = {}
        self._settling: deque[tuple[str, str]] = deque()  # (job, final state) whose dependents are being settled

    # -- admission -------------------------------------------------------

    def _check_dependencies(self, command: Submit) -> None:
        """Refuse, before anything is stored, a dependency this peer knows
        does not exist (ours, never issued or forgotten)."""
        for dep in command.spec.dependencies:
            if split_job_id(dep)[0] == self.peer_id and dep not in self.records and dep not in self.parents:
                raise ClientError(ErrorCode.NOT_FOUND, f"dependency {dep} is not a job of this peer "
                                  f"(never issued, or finished and forgotten; it has issued {self.next_seq - 1})")

    def _admit(self, record: JobRecord, command: Submit) -> None:
        """A new record's first state — WAITING, SCHEDULED or QUEUED (then
        held here) — written in this batch."""
        if command.delay_s is not None:
            record.due_at = self._wall + command.delay_s
        elif command.at is not None:
            record.due_at = command.at
        if record.spec.dependencies:
            record.state = JobState.WAITING
            self._put_record(record)
            self._wait_for(record)
        elif record.due_at is not None and record.due_at > self._wall:
            record.state = JobState.SCHEDULED
            self._put_record(record)
            self._schedule(record)
        else:
            # A new job: held at once, and it may start before the batch is
            # durable (its OK waits for the sync; a crash before it leaves a
            # run of a job nobody was told about, which nothing depends on).
            record.due_at = None
            self._put_record(record)
            self._hold(self._held_from_record(record, 1), self._now, persist=True)

    def _wait_for(self, record: JobRecord) -> None:
        """Index a WAITING record's dependencies; those of ours already final
        are settled at once (in this batch)."""
        unmet = self.unmet[record.job_id] = dict.fromkeys(d for d in record.spec.dependencies if d not in record.met)
        for dep in unmet:
            self.dependents.setdefault(dep, []).append(record.job_id)
        for dep in list(unmet):
            state = self._state_of(dep)
            if state in _FINAL_NAMES:
                self._dependency_final(dep, state)
            elif split_job_id(dep)[0] != self.peer_id:
                self.next_dependency_poll_at = self._now  # ask its home soon

    # -- dependencies ------------------------------------------------------

    def _dependency_final(self, dep: str, state: str) -> None:
        """`dep` is final (or unknown to its home): settle what waits for it."""
        for job_id in self.dependents.pop(dep, ()):
            record = self.records.get(job_id)
            unmet = self.unmet.get(job_id)
            if record is None or unmet is None or dep not in unmet:
                continue
            del unmet[dep]
            if state == _UNKNOWN:
                self._cancel_record(record, "dependency-not-found")
            elif dep in record.spec.after and state != JobState.DONE.value:
                self._cancel_record(record, "dependency-failed")
            elif unmet:
                record.met += (dep,)  # durable: its home may forget it before the others are met
                self._put_record(record)
            else:
                del self.unmet[job_id]
                if record.due_at is not None and record.due_at > self._wall:
                    record.apply(JobEvent.DEFER)
                    self._schedule(record)
                    self._put_record(record)
                else:
                    record.apply(JobEvent.RELEASE)
                    self._enqueue(record)

    def _state_of(self, job_id: str) -> str | None:
        """The state of a job or a parent of ours, None if unknown."""
        record = self.records.get(job_id)
        if record is not None:
            return record.state.value
        parent = self.parents.get(job_id)
        return None if parent is None else parent.state

    def _poll_dependencies(self, now: float) -> None:
        """Ask other homes about the dependencies our waiting jobs wait for."""
        if now < self.next_dependency_poll_at or self.cluster is None:
            return
        self.next_dependency_poll_at = now + self.config.dependency_poll_s
        by_home: dict[str, list[str]] = {}
        for dep in self.dependents:
            home = split_job_id(dep)[0]
            if home != self.peer_id:
                by_home.setdefault(home, []).append(dep)
        limit = self.config.dependency_query_ids_max
        for home, deps in by_home.items():
            for start in range(0, len(deps), limit):
                self._send(home, DependencyQuery(self.peer_id, tuple(deps[start:start + limit])))

    def _on_dependency_query(self, msg: DependencyQuery) -> None:
        states = []
        for job_id in msg.job_ids[: self.config.dependency_query_ids_max]:
            states.append((job_id, self._state_of(job_id) or _UNKNOWN))
        self._send(msg.asker, DependencyReply(self.peer_id, tuple(states)))

    def _on_dependency_reply(self, msg: DependencyReply) -> None:
        for dep, state in msg.states:
            if split_job_id(dep)[0] != msg.home or dep not in self.dependents:
                continue  # not asked, or not of that home: a peer speaks only for its own jobs
            if state in _FINAL_NAMES or state == _UNKNOWN:
                self._dependency_final(dep, state)

    # -- due times and retries ---------------------------------------------

    def _release_due(self) -> None:
        while self.due and self.due[0][0] <= self._wall:
            due, _, job_id = heapq.heappop(self.due)
            if self.scheduled.get(job_id) == due:
                del self.scheduled[job_id]
                record = self.records[job_id]
                record.apply(JobEvent.DUE)
                self._enqueue(record)

    def _schedule(self, record: JobRecord) -> None:
        """Index a SCHEDULED record by its due time."""
        self.scheduled[record.job_id] = record.due_at
        heapq.heappush(self.due, (record.due_at, split_job_id(record.job_id)[1], record.job_id))

    def _enqueue(self, record: JobRecord) -> None:
        """A home record becomes QUEUED here, as a new attempt held at home
        (the balancer moves it as it moves any queued job)."""
        record.due_at = None
        record.executor = self.peer_id
        self._put_record(record)
        self._start_after_sync[record.job_id] = True
        # An older attempt may still run here, being killed (a retry of a run
        # this peer took back): the new one waits for it to end.
        self._hold_newer(self._held_from_record(record, record.attempt), self._now)

    def _retry(self, record: JobRecord, result: JobResult, reason: str) -> None:
        """A try failed and tries are left: the next one is a new attempt
        (the failed run and every older copy are fenced off), due after
        `backoff × 2^(k-1)` with equal jitter, capped by `retry_backoff_max_s`."""
        record.apply(JobEvent.RETRY)
        record.tries += 1
        record.attempt += 1
        record.floor = record.attempt
        record.moves = 0
        record.exit_code = result.exit_code
        record.reason = reason  # the last failure, shown while it waits
        record.started_at = record.finished_at = None
        base = min(record.spec.backoff_s * 2 ** (record.tries - 2), self.config.retry_backoff_max_s)
        record.due_at = self._wall + (base / 2 + self.rng.random() * base / 2 if base > 0 else 0.0)
        record.executor = self.peer_id
        self.counters.retried += 1
        self.remote_open.pop(record.job_id, None)
        self._drop_held(record.job_id)
        if record.due_at <= self._wall:
            record.apply(JobEvent.DUE)
            self._enqueue(record)
        else:
            self._schedule(record)
            self._put_record(record)

    # -- the end of a job ----------------------------------------------------

    def _cancel_record(self, record: JobRecord, reason: str) -> None:
        """Make a live record CANCELLED (by a client, or a dependency), and
        stop it wherever it is."""
        record.apply(JobEvent.CANCEL)
        record.finished_at = record.final_at = self._wall
        record.reason = reason
        self.counters.cancelled += 1
        self._put_record(record)
        self._drop_held(record.job_id)
        if record.executor != self.peer_id and self.cluster is not None:
            self._send(record.executor, CancelJob(record.job_id))
        self.remote_open.pop(record.job_id, None)
        self._retire(record.job_id)
        self._wake(record)

    def _became_final(self, record: JobRecord) -> None:
        """Index a final record for retention and settle what waits for it."""
        self.scheduled.pop(record.job_id, None)  # (cancelled while scheduled)
        for dep in self.unmet.pop(record.job_id, ()):  # (cancelled while it waited)
            waiting = self.dependents.get(dep)
            if waiting is not None and record.job_id in waiting:
                waiting.remove(record.job_id)
                if not waiting:
                    del self.dependents[dep]  # nothing waits for it any more: stop asking
        if parent_of(record.job_id) is not None:
            self._child_final(record)
        # Retention counts from when this home made it final, on its own
        # clock: `finished_at` is the executor's, which may be far behind
        # (forgotten at once) or ahead.
        self._became_final_id(record.job_id, record.state.value, record.final_at or self._wall, record.spec.keep_s)

    def _became_final_id(self, job_id: str, state: str, end: float, keep_s: float | None) -> None:
        """A job or a parent (executor/core/parents.py) is final at `end`."""
        keep = keep_s if keep_s is not None else self.config.records_retained_s
        if keep is not None:
            heapq.heappush(self.expiries, (end + keep, next(self._tiebreak), job_id))
        if job_id in self.dependents:
            # A worklist, not recursion: settling one job may end a long chain.
            self._settling.append((job_id, state))
            if len(self._settling) == 1:  # (else an outer call is draining it)
                while self._settling:
                    self._dependency_final(*self._settling[0])
                    self._settling.popleft()

    def _expire_kept(self) -> None:
        while self.expiries and self.expiries[0][0] <= self._wall:
            _, _, job_id = heapq.heappop(self.expiries)
            if job_id in self.finished:
                del self.finished[job_id]
                self._forget(job_id)
            elif job_id in self.parents and self.parents[job_id].final:
                del self.parents[job_id]
                self._writes.append((layout.key(layout.PARENT, job_id), None))

    def _forget(self, job_id: str) -> None:
        """Drop a final record and its output (ids are never reused, so a
        forgotten id can only ever be answered `not-found`)."""
        del self.records[job_id]
        self._writes.append((layout.key(layout.JOB, job_id), None))
        self._writes.append((layout.key(layout.OUTPUT, job_id), None))
        self.counters.forgotten += 1

    def _restore_schedule(self) -> None:
        """After `_restore`: rebuild the indexes from the records."""
        for record in list(self.records.values()):
            if record.state is JobState.SCHEDULED:
                record.due_at = record.due_at or 0.0
                self._schedule(record)
            elif record.state is JobState.WAITING:
                self._wait_for(record)
            elif record.state.final:
                end = record.final_at if record.final_at is not None else record.submitted_at
                self._became_final_id(record.job_id, record.state.value, end, record.spec.keep_s)

    def _validate_schedule(self) -> None:
        for job_id, record in self.records.items():
            if record.state is JobState.WAITING:
                assert job_id in self.unmet, f"{job_id} waits for nothing known"
                for dep in self.unmet[job_id]:
                    assert job_id in self.dependents.get(dep, ()), f"{job_id} waits for {dep} unindexed"
            if record.state in (JobState.WAITING, JobState.SCHEDULED):
                held = job_id in self.queue or job_id in self.superseded
                assert not held and (job_id not in self.running or job_id in self.cancelled_running), \
                    f"{job_id} is {record.state.value} but held here"
            assert (record.state is JobState.SCHEDULED) == (job_id in self.scheduled), f"{job_id}: scheduled index"
        assert set(self.unmet) <= {j for j, r in self.records.items() if r.state is JobState.WAITING}, \
            "unmet dependencies for a job that is not waiting"
