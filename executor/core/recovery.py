"""Recovery and repair: rebuilding memory from the store after a restart,
resending results home, re-issuing jobs stranded on dead peers, and the
audits that find jobs a holder lost. A mixin of `PeerCore`; no I/O."""

from __future__ import annotations

from executor.core.events import _Outgoing
from executor.core.jobs import HeldJob, JobEvent, JobRecord, JobState
from executor.core.messages import Audit, AuditReply, JobResult
from executor.core.protocol import split_job_id
from storage import layout


class RecoveryMixin:
    def _restore(self, snap: layout.Snapshot, now: float) -> None:
        """Rebuild memory from the store after a start or a crash.

        Every job held here goes back in the queue, oldest first; one that was
        running when the peer died runs again as a new attempt, and its home
        hears of it. Results still in the outbox are resent.
        """
        # Records are built one at a time from the store (no table of decoded
        # dicts: a restart's peak memory is its steady memory), then put in
        # the peer's own sequence order, not the store's key order (`n1-10`
        # sorts before `n1-2` as text): LIST shows newest first the same
        # before and after a restart.
        records = sorted((JobRecord.from_wire(d) for d in snap.jobs()), key=lambda r: split_job_id(r.job_id)[1])
        for record in records:
            self.records[record.job_id] = record
            if not record.state.final and record.executor != self.peer_id:
                self.remote_open[record.job_id] = None
        if records:
            self.next_seq = max(self.next_seq, split_job_id(records[-1].job_id)[1] + 1)
        finals = [r for r in records if r.state.final]
        for record in sorted(finals, key=lambda r: (r.finished_at or 0.0, split_job_id(r.job_id)[1])):
            self.finished[record.job_id] = None
        del records, finals
        held = sorted((self._share(HeldJob.from_wire(d)) for d in snap.held()),
                      key=lambda j: (j.submitted_at, split_job_id(j.job_id)[1]))
        for job in held:
            if job.home == self.peer_id and self._outdated(job):
                # A copy of ours below its record's attempt (lent, then the
                # job was retried or re-issued; or final): it must not run.
                self._writes.append((layout.key(layout.HELD, job.job_id), None))
                continue
            if job.running:
                job.running = False
                job.attempt += 1
                job.moves = 0
                self.counters.reexecuted += 1
                self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))
            self.queue[job.job_id] = job
            self._report_location(job, now)
        for d in snap.outbox():
            result = JobResult(**d["r"])
            self.outbox[result.job_id] = _Outgoing(result, d["h"], now, self.config.result_retry_s)
        # A home record that says "here" but has no held copy was lost in no
        # batch we wrote (record and q/ always change together); requeue it
        # rather than trust that invariant blindly.
        for record in self.records.values():
            if (record.state in (JobState.QUEUED, JobState.RUNNING) and record.executor == self.peer_id
                    and record.job_id not in self.queue):
                self._log(f"job {record.job_id} was recorded here but not held; requeued")
                self._hold(self._held_from_record(record, record.attempt + 1), now, persist=True)

    def _share(self, job: HeldJob) -> HeldJob:
        """A job held at its home shares its id, spec and submission time
        with its record, as it does when it is submitted: a queued job costs
        one set of them, before and after a restart alike."""
        record = self.records.get(job.job_id)
        if record is not None and job.home == self.peer_id:
            job.job_id = record.job_id
            if job.spec == record.spec:
                job.spec = record.spec
            if job.submitted_at == record.submitted_at:
                job.submitted_at = record.submitted_at
        return job

    def _held_from_record(self, record: JobRecord, attempt: int) -> HeldJob:
        return HeldJob(record.job_id, self.peer_id, record.spec, attempt, 0, record.submitted_at)

    def _home_is_back(self, peer_id: str, now: float) -> None:
        """A peer came (back) to life: results waiting for it go now, not
        after whatever back-off its absence had grown to."""
        for out in self.outbox.values():
            if out.home == peer_id:
                out.next_send_at = now
                out.backoff_s = self.config.result_retry_s
                out.orphaned_at = None

    def _orphan_outbox(self, home: str, now: float) -> None:
        """Membership forgot `home` (dead past its retention): its results
        wait `outbox_orphan_retain_s` more for it to come back (a long
        outage), then leave the outbox, at most `outbox_orphans_max` of them
        at once, oldest first. So the outbox stays bounded by the live
        members' results. A home that comes back later still finds every
        job: its audits find them missing here and re-issue them."""
        for out in self.outbox.values():
            if out.home == home and out.orphaned_at is None:
                out.orphaned_at = now
        self._drop_orphans(now)

    def _drop_orphans(self, now: float) -> None:
        orphans = sorted((out.orphaned_at, job_id) for job_id, out in self.outbox.items()
                         if out.orphaned_at is not None)
        excess = len(orphans) - self.config.outbox_orphans_max
        gone = [job_id for i, (since, job_id) in enumerate(orphans)
                if i < excess or now - since >= self.config.outbox_orphan_retain_s]
        for job_id in gone:
            del self.outbox[job_id]
            self._writes.append((layout.key(layout.OUTBOX, job_id), None))
        if gone:
            self.counters.outbox_dropped += len(gone)
            self._log(f"{len(gone)} results dropped from the outbox: their homes were forgotten long ago")

    def _resend_results(self, now: float) -> None:
        if now >= self.next_orphan_scan_at:
            self.next_orphan_scan_at = now + 1.0
            self._drop_orphans(now)
        for out in self.outbox.values():
            if out.next_send_at <= now:
                self._send(out.home, out.result)
                out.next_send_at = now + out.backoff_s
                out.backoff_s = min(out.backoff_s * 2, self.config.result_retry_max_s)

    def _maybe_reissue(self, now: float) -> None:
        """Re-issue jobs whose executor has stayed dead past the grace period."""
        if now < self.next_reissue_scan_at or not self.remote_open:
            return
        self.next_reissue_scan_at = now + min(1.0, self.config.reissue_grace_s / 4)
        for job_id in list(self.remote_open):
            record = self.records[job_id]
            dead_for = self.cluster.dead_for(record.executor, now)
            if dead_for is None or dead_for < self.config.reissue_grace_s:
                continue
            if self._holds(job_id):
                continue  # a copy is here (taken back from a handoff): it runs here
            self._reissue(record, now, f"executor {record.executor} dead for {dead_for:.1f}s")

    def _reissue(self, record: JobRecord, now: float, why: str) -> None:
        """Run the job again from here as a new attempt; results of older
        attempts are ignored from now on (they are below the floor)."""
        self._log(f"job {record.job_id}: {why}; re-issued")
        attempt = record.attempt + 1
        record.apply(JobEvent.REQUEUE)
        record.attempt = record.floor = attempt
        record.moves = 0
        record.executor = self.peer_id
        self.remote_open.pop(record.job_id, None)
        self._missing.pop(record.job_id, None)
        self.counters.reissued += 1
        self._put_record(record)
        self._hold_newer(self._held_from_record(record, attempt), now)

    def _maybe_audit(self, now: float) -> None:
        if now < self.next_audit_at:
            return
        self.next_audit_at = now + self.config.audit_interval_s
        by_holder: dict[str, list[str]] = {}
        for job_id in self.remote_open:
            record = self.records[job_id]
            asked = by_holder.setdefault(record.executor, [])
            if len(asked) < self.config.audit_batch_max and self.cluster.is_alive(record.executor):
                asked.append(job_id)
        self._audits = {}
        for holder, job_ids in by_holder.items():
            if job_ids:
                self._audits[holder] = {j: (self.records[j].attempt, self.records[j].moves) for j in job_ids}
                self._send(holder, Audit(self.peer_id, tuple(job_ids)))

    def _on_audit(self, msg: Audit) -> None:
        missing = tuple(j for j in msg.job_ids[: self.config.audit_batch_max]
                        if not self._holds(j) and j not in self.outbox)
        self._send(msg.auditor, AuditReply(self.peer_id, missing))

    def _on_audit_reply(self, msg: AuditReply, now: float) -> None:
        """A job its recorded holder says it does not have, twice in a row
        with no news of the job in between, is re-issued. Once is not enough:
        the job may be in flight to a new holder whose report has not arrived
        yet (a re-issue then would only make it run twice)."""
        asked = self._audits.pop(msg.holder, {})
        missing = set(msg.missing)
        for job_id, version in asked.items():
            record = self.records.get(job_id)
            current = (
                record is not None and not record.state.final and record.executor == msg.holder
                and (record.attempt, record.moves) == version
            )
            if job_id not in missing or not current:
                self._missing.pop(job_id, None)
            elif self._missing.get(job_id) == version and not self._holds(job_id):
                self._reissue(record, now, f"{msg.holder} twice said it does not hold it")
            else:
                self._missing[job_id] = version
