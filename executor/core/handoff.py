"""Work moving between peers: stealing, the two-phase handoff, and the
location reports that keep a home's record of where its job is. A mixin of
`PeerCore`; no I/O (docs/cluster.md has every crash point)."""

from __future__ import annotations

from executor.core import balance
from executor.core.events import _Lend
from executor.core.jobs import HeldJob, JobEvent, JobRecord, JobState
from executor.core.messages import CancelJob, Handoff, HandoffAck, JobMoved, JobTransfer, StealRequest
from executor.core.protocol import JobSpec
from storage import layout


class HandoffMixin:
    def _maybe_steal(self, now: float) -> None:
        for request_id, deadline in list(self.steals.items()):
            if deadline <= now:
                del self.steals[request_id]
        if now < self.next_steal_at or len(self.steals) >= self.config.steals_in_flight_max or self.disk_low:
            return
        self.next_steal_at = now + self.config.steal_interval_s
        me = self.load
        victim = self.cluster.victim(me)
        if victim is None:
            # Loads are gossiped once per probe period: looking again every
            # tick would mostly re-read the same news. A slot freeing up here
            # (see _on_exited) looks again at once.
            self.next_steal_at = now + self.config.steal_idle_recheck_s
            return
        want = balance.steal_request_size(me, victim, self.cluster.balance_config)
        if want <= 0:
            return
        request_id = self.next_request_id
        self.next_request_id += 1
        self.steals[request_id] = now + self.config.steal_timeout_s
        self._send(victim.peer_id, StealRequest(request_id, self.peer_id, me.queued, me.running, me.slots, want))

    def _on_steal_request(self, msg: StealRequest, now: float) -> None:
        thief = balance.PeerLoad(msg.thief, max(0, msg.queued), max(0, msg.running), max(1, msg.slots))
        self.cluster.observed(thief)
        give = balance.grant_size(self.load, thief, msg.want, self.cluster.balance_config)
        give = min(give, self.config.handoff_batch_max)
        # Give the head of the queue (highest priority, oldest): the thief has
        # a free slot now, so they start sooner there than here, which keeps
        # the cluster close to one global order. Loads count slots: `give`
        # is slots' worth, and a job wider than the thief stays.
        jobs, width = [], 0
        for job in self.queue.values():
            if len(jobs) >= give or width >= give:
                break
            if job.spec.slots <= thief.slots and width + job.spec.slots <= give:
                jobs.append(job)
                width += job.spec.slots
        for job in jobs:
            del self.queue[job.job_id]
        self.cluster.moved(msg.thief, width)
        self._lend(msg.thief, jobs, msg.request_id, now)

    def _lend(self, receiver: str, jobs: list[HeldJob], request_id: int, now: float) -> None:
        """Offer `jobs` (already out of the queue) to `receiver`; they stay
        held here, durable, until it acks (docs/cluster.md, handoff)."""
        transfer_id = self.next_request_id
        self.next_request_id += 1
        for job in jobs:
            self._start_after_sync.pop(job.job_id, None)  # (its sync comes before the handoff is sent)
        if jobs:
            self.lends[transfer_id] = _Lend(receiver, jobs, now + self.config.handoff_timeout_s)
        transfers = tuple(
            JobTransfer(
                job.job_id, job.home, job.spec.kind, job.spec.command, job.spec.sleep_ms,
                job.spec.timeout_s, job.attempt, job.moves + 1, job.submitted_at,
                job.spec.priority, job.spec.env, job.spec.cwd, job.spec.slots,
            )
            for job in jobs
        )
        me = self.load
        self._send(receiver, Handoff(transfer_id, self.peer_id, request_id, transfers, me.queued, me.running, me.slots))

    def _observed(self, peer_id: str, queued: int, running: int, slots: int) -> None:
        """A peer told us its exact load in a message of its own."""
        self.cluster.observed(balance.PeerLoad(peer_id, queued, running, max(1, slots)))

    def _on_handoff(self, msg: Handoff, now: float) -> None:
        self.steals.pop(msg.request_id, None)
        if not msg.jobs:
            self._observed(msg.sender, msg.queued, msg.running, msg.slots)
            return
        if self.disk_low:
            # Refused: no ack, so the sender keeps the jobs (and takes them
            # back when its lease ends); nothing here depends on them.
            self.counters.handoffs_refused += 1
            return
        for t in msg.jobs:
            here = self.queue.get(t.job_id) or self.running.get(t.job_id) or self.superseded.get(t.job_id)
            if here is not None and here.attempt >= t.attempt:
                continue  # a duplicate transfer: we already hold it
            record = self.records.get(t.job_id)
            if (record is not None and record.state.final) or (record is None and t.home == self.peer_id):
                continue  # it came home finished meanwhile (or so long ago it is forgotten)
            if record is not None and t.attempt < record.floor:
                continue  # an attempt this home re-issued: fenced (its newer attempt may be lent away now)
            # Back home, a job shares its record's spec (with the options only the home keeps).
            spec = record.spec if record is not None else JobSpec(
                t.kind, t.command, t.sleep_ms, t.timeout_s, t.priority, t.env, t.cwd, slots=t.slots)
            job = HeldJob(t.job_id, t.home, spec, t.attempt, t.moves, t.submitted_at)
            self._hold_newer(job, now)  # durable now: the ack below promises it
            self.counters.steals_in += 1
            self._report_location(job, now)
        self._observed(msg.sender, msg.queued, msg.running, msg.slots)
        # Sent only after the batch above is durable: the sender may forget them then.
        me = self.load
        self._send(msg.sender, HandoffAck(msg.transfer_id, self.peer_id, me.queued, me.running, me.slots))

    def _on_handoff_ack(self, msg: HandoffAck, now: float) -> None:
        self._observed(msg.receiver, msg.queued, msg.running, msg.slots)
        lend = self.lends.pop(msg.transfer_id, None)
        if lend is None or lend.receiver != msg.receiver:
            return  # already reclaimed after a timeout: both copies may run
        for job in lend.jobs:
            # A newer attempt of the job may have come here since the lend
            # (a re-issue, another handoff): its q/ entry is not this lend's.
            if not self._holds(job.job_id):
                self._writes.append((layout.key(layout.HELD, job.job_id), None))
            self.counters.steals_out += 1
            if job.home == self.peer_id:
                # The ack proves where the job is: the home's record says so
                # now, not only once the receiver's report arrives (which a
                # broken link may lose; the holder's results are fenced by it).
                record = self.records.get(job.job_id)
                if record is not None and not record.state.final and record.attempt == job.attempt:
                    self._move_record(record, job.attempt, job.moves + 1, msg.receiver, False)

    def _expire_lends(self, now: float) -> None:
        for transfer_id, lend in list(self.lends.items()):
            if lend.deadline <= now or self.cluster.is_dead(lend.receiver):
                del self.lends[transfer_id]
                self._log(f"handoff {transfer_id} to {lend.receiver} unacknowledged; took {len(lend.jobs)} jobs back")
                for job in reversed(lend.jobs):
                    held = self._held_attempt(job.job_id)
                    if job.home == self.peer_id and self._outdated(job):
                        # Ours, and the job was retried, re-issued or
                        # finished meanwhile: this copy must not run.
                        self._writes.append((layout.key(layout.HELD, job.job_id), None))
                    elif held is None or held < job.attempt:  # never over a newer attempt that came meanwhile
                        self._hold(job, now, persist=False, front=True)

    def _report_location(self, job: HeldJob, now: float) -> None:
        if job.home == self.peer_id:
            record = self.records.get(job.job_id)
            if record is not None and not record.state.final:
                self._move_record(record, job.attempt, job.moves, self.peer_id, job.running)
        else:
            self._send(job.home, JobMoved(job.job_id, job.attempt, job.moves, self.peer_id, job.running))

    def _move_record(self, record: JobRecord, attempt: int, moves: int, executor: str, running: bool) -> None:
        if (attempt, moves) < (record.attempt, record.moves):
            return  # an older report overtaken by a newer one
        state = record.state
        if (attempt, moves, executor) == (record.attempt, record.moves, record.executor) and (
                state is (JobState.RUNNING if running else JobState.QUEUED)):
            return  # nothing new (e.g. recovery re-reporting a job as it was): no write
        record.apply(JobEvent.START if running else JobEvent.MOVE)
        record.attempt, record.moves, record.executor = attempt, moves, executor
        if executor == self.peer_id:
            self.remote_open.pop(record.job_id, None)
        else:
            self.remote_open[record.job_id] = None
        self._put_record(record)

    def _on_moved(self, msg: JobMoved, now: float) -> None:
        record = self.records.get(msg.job_id)
        if record is None:
            return
        if record.state.final:
            # The job is finished or cancelled: tell its holder to drop it.
            self._send(msg.executor, CancelJob(msg.job_id))
            return
        self._move_record(record, msg.attempt, msg.moves, msg.executor, msg.running)
