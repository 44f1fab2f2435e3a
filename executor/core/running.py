"""Running jobs here: the queue, starting jobs in free slots, a job's exit,
and the home's acceptance of results, fenced by attempt and holder. A mixin
of `PeerCore`; no I/O."""

from __future__ import annotations

from executor.core.events import JobExited, KillJob, StartJob, _Outgoing
from executor.core.jobs import HeldJob, JobEvent, JobRecord
from executor.core.messages import JobResult
from storage import layout


class RunningMixin:
    def _hold(self, job: HeldJob, now: float, *, persist: bool, front: bool = False) -> None:
        self.queue[job.job_id] = job
        if front:
            self.queue.move_to_end(job.job_id, last=False)
        if persist:
            self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))

    def _dispatch(self, now: float) -> None:
        """Start queued jobs, highest priority and oldest first, while slots
        are free. A job wider than the free slots waits for them (nothing
        smaller overtakes it, so it cannot starve); one wider than this peer
        is skipped: it waits to be stolen by a peer wide enough."""
        while self.queue and self.running_width < self.slots:
            job_id, job = self.queue.head(self.slots)
            if job is None:
                return  # only jobs too wide for this peer
            if job.spec.slots > self.slots - self.running_width:
                return
            del self.queue[job_id]
            if job.home == self.peer_id and self._outdated(job):
                self._writes.append((layout.key(layout.HELD, job_id), None))
                continue
            self.running_width += job.spec.slots
            job.running = True
            job.started_at = now  # monotonic: the runtime is measured on it
            self.running[job_id] = job
            self.counters.started += 1
            self._writes.append((layout.key(layout.HELD, job_id), layout.encode(job.to_wire())))
            if job.home == self.peer_id:
                record = self.records.get(job_id)
                if record is not None:
                    record.apply(JobEvent.START)
                    record.attempt = job.attempt
                    record.started_at = self._wall
                    record.executor = self.peer_id
                    self.remote_open.pop(job_id, None)
                    self._put_record(record)
            else:
                self._report_location(job, now)
            timeout = job.spec.timeout_s or self.config.job_timeout_default_s
            # A job this batch released (a dependency done, a due time, a
            # retry) starts once the batch is durable: never on a decision a
            # crash could take back (docs/cluster.md, the job model).
            after_sync = self._start_after_sync.pop(job_id, False)
            self._actions.append(StartJob(job_id, job.attempt, job.spec, timeout, after_sync, now))

    def _outdated(self, job: HeldJob) -> bool:
        """A copy of one of our own jobs that must not run: the job is final
        (or forgotten), or a newer attempt of it is held elsewhere — its
        result would be fenced off, and the record must keep naming the
        holder of the current attempt, not this copy."""
        record = self.records.get(job.job_id)
        return record is None or record.state.final or job.attempt < record.attempt

    def _on_exited(self, ev: JobExited, now: float) -> None:
        job = self.running.get(ev.job_id)
        if job is None or job.attempt != ev.attempt:
            return  # a stale report from a job we already let go of
        del self.running[ev.job_id]
        self.running_width -= job.spec.slots
        newer = self.superseded.pop(ev.job_id, None)
        if newer is not None:
            self._hold(newer, now, persist=False)  # q/ already holds it
        else:
            self._writes.append((layout.key(layout.HELD, ev.job_id), None))
        if not self.queue:
            self.next_steal_at = min(self.next_steal_at, now)  # a free slot and nothing queued
        if ev.job_id in self.cancelled_running:
            self.cancelled_running.discard(ev.job_id)
            return
        result = JobResult(
            job_id=ev.job_id, attempt=ev.attempt, executor=self.peer_id,
            exit_code=ev.exit_code, reason=ev.reason, stdout=ev.stdout, stderr=ev.stderr,
            truncated=ev.truncated, finished_at=self._wall,
            # Wall times for display whose difference is the monotonic runtime.
            started_at=self._wall - (now - job.started_at) if job.started_at is not None else None,
        )
        if job.home == self.peer_id:
            self._accept_result(result)
        else:
            retry_s = self.config.result_retry_s
            self.outbox[ev.job_id] = _Outgoing(result, job.home, now + retry_s, retry_s)
            self._writes.append(
                (layout.key(layout.OUTBOX, ev.job_id), layout.encode({"h": job.home, "r": _result_dict(result)}))
            )
            self._send(job.home, result)

    def _accept_result(self, result: JobResult) -> bool | None:
        """At the home: keep the first result of a job; ignore the rest.

        Fenced by the attempt and the holder: only the executor of record,
        running the current attempt, may finish a job. True: kept; False: a
        duplicate or stale result (acknowledged, so its sender stops); None:
        from a peer that is not the job's holder (not acknowledged: if it is
        an honest holder whose location report was lost, the audit settles
        where the job is, and its resends are answered once it is final)."""
        record = self.records.get(result.job_id)
        if record is None or record.state.final or result.attempt < max(record.floor, record.attempt):
            self.counters.results_duplicate += 1
            return False
        if result.executor != record.executor and result.executor != self.peer_id:
            # (A run here is a run we saw: our own results are never refused,
            # whatever stale location the record names.)
            self.counters.results_refused += 1
            return None
        succeeded = result.exit_code == 0 and result.reason is None
        if not succeeded and record.tries < record.spec.tries:
            self._retry(record, result, result.reason or "nonzero-exit")
            return True
        record.apply(JobEvent.SUCCEED if succeeded else JobEvent.FAIL)
        record.attempt = result.attempt  # STATUS and RESULT name the run whose result this is
        record.executor = result.executor
        record.exit_code = result.exit_code
        record.reason = None if succeeded else (result.reason or "nonzero-exit")
        record.started_at = result.started_at
        record.finished_at = result.finished_at  # the executor's clock, for display
        record.final_at = self._wall  # this home's: retention counts from it
        record.stdout_bytes = len(result.stdout)
        record.stderr_bytes = len(result.stderr)
        record.truncated = result.truncated
        if succeeded:
            self.counters.finished += 1
        else:
            self.counters.failed += 1
        self.remote_open.pop(record.job_id, None)
        self._put_record(record)
        if result.stdout or result.stderr:
            self._writes.append((layout.key(layout.OUTPUT, record.job_id), layout.encode([result.stdout, result.stderr])))
        self._retire(record.job_id)
        self._wake(record)
        self._drop_held(record.job_id)  # a re-issued copy here need not run now
        return True

    def _retire(self, job_id: str) -> None:
        """A record became final. Past `records_retained_max` final records,
        the oldest are forgotten with their output; the rest when their
        retention time is up (executor/core/schedule.py)."""
        self.finished[job_id] = None
        self._missing.pop(job_id, None)
        self._became_final(self.records[job_id])
        while len(self.finished) > self.config.records_retained_max:
            old, _ = self.finished.popitem(last=False)
            self._forget(old)

    def _put_record(self, record: JobRecord) -> None:
        self._writes.append((layout.key(layout.JOB, record.job_id), layout.encode(record.to_wire())))

    def _drop_held(self, job_id: str) -> None:
        """Stop holding a job: unqueue it, or kill it if it runs here."""
        self._start_after_sync.pop(job_id, None)
        if self.superseded.pop(job_id, None) is not None:
            self._writes.append((layout.key(layout.HELD, job_id), None))
        if job_id in self.queue:
            del self.queue[job_id]
            self._writes.append((layout.key(layout.HELD, job_id), None))
        elif job_id in self.running and job_id not in self.cancelled_running:
            # The slot stays taken until the process is really gone.
            self.cancelled_running.add(job_id)
            self._actions.append(KillJob(job_id, self.running[job_id].attempt))

    def _hold_newer(self, job: HeldJob, now: float) -> None:
        """Hold a newer attempt of a job, durably, in place of any older copy
        here. An older attempt still running is killed (its result is below
        the floor now) and the newer one runs once it has exited: never two
        runs of one job at once on this peer."""
        if job.job_id in self.running:
            self._drop_held(job.job_id)
            self.superseded[job.job_id] = job
            self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))
        else:
            self._hold(job, now, persist=True)  # replaces an older queued attempt

    def _held_attempt(self, job_id: str) -> int | None:
        """The attempt of the copy queued, running or waiting to run here."""
        job = self.queue.get(job_id) or self.superseded.get(job_id) or self.running.get(job_id)
        return None if job is None else job.attempt

    def _holds(self, job_id: str) -> bool:
        """Is a copy of the job here: queued, running, waiting to run, or lent?"""
        return self._held_attempt(job_id) is not None or any(
            job.job_id == job_id for lend in self.lends.values() for job in lend.jobs)


def _result_dict(result: JobResult) -> dict:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}
