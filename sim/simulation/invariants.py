"""The invariants: safety after every step and at every durable write (no
acknowledged job lost, a final record never changes, every stored job is the
one submitted, no peer runs more jobs than its slots, each believes itself
alive, its core and membership validate), and liveness at the end. Records
are read through the project's own decoders (storage.layout, JobRecord,
HeldJob), never by raw keys.
"""

from __future__ import annotations

from executor.core.jobs import HeldJob, JobRecord, JobState
from executor.core.protocol import JobSpec
from gossip.membership import MemberState
from sim.simulation.base import _TICK_EVENT, InvariantViolation, _Peer
from storage import layout


def job_record(raw: bytes) -> JobRecord:
    """A home's durable j/ record, decoded as the core decodes it."""
    return JobRecord.from_wire(layout.decode(raw, "job record"))


def held_job(raw: bytes) -> HeldJob:
    """A durable q/ record (a job held to run), decoded as the core decodes it."""
    return HeldJob.from_wire(layout.decode(raw, "held job"))


class InvariantsMixin:
    """The checks of the simulation's safety and liveness."""

    def _check_step(self, peer: _Peer, event) -> None:
        core = peer.core
        if self.model_started:
            self._model_check_priorities(peer)
        if len(core.running) > core.slots:
            raise InvariantViolation(f"{peer.name}: core runs {len(core.running)} jobs on {core.slots} slots")
        membership = core.cluster.membership
        me = membership.member(peer.name)
        if me is None or me.state is not MemberState.ALIVE:
            raise InvariantViolation(f"{peer.name} believes itself {me.state.value if me else 'unknown'}")
        # Both validate_state()s are O(state) (members; records and queues):
        # on large runs they are run once per peer per probe period (its
        # ticks) instead of after every step (--check-membership).
        if self.membership_full or (event is _TICK_EVENT and self.now >= peer.next_validate_at):
            peer.next_validate_at = self.now + self.config.gossip.probe_interval_s
            try:
                membership.validate_state()
            except AssertionError as exc:
                raise InvariantViolation(f"{peer.name}: membership state invalid: {exc!r}") from None
            try:
                core.validate_state()
            except AssertionError as exc:
                raise InvariantViolation(f"{peer.name}: core state invalid: {exc}") from None

    def _check_spec(self, peer: _Peer, job_id: str, stored: JobSpec, what: str) -> None:
        spec = self.specs[self.acked[job_id]]
        if stored.kind != spec.kind or stored.sleep_ms != spec.sleep_ms or stored.command != spec.command:
            raise InvariantViolation(f"{peer.name}: {what}{job_id} holds another job's spec "
                                     f"({stored.kind} {stored.sleep_ms} ms, submitted {spec.sleep_ms} ms)")
        # The options: a home's record keeps them all; a held copy those that
        # travel with the job (priority, environment, directory).
        travels = (stored.priority, stored.env, stored.cwd) == (spec.priority, spec.env, spec.cwd)
        if not travels or (what == "j/" and stored != spec):
            raise InvariantViolation(f"{peer.name}: {what}{job_id} holds {stored}, submitted {spec}")

    def _check_touched(self, peer: _Peer, touched: dict[bytes, bytes | None]) -> None:
        """Every job key a durable batch changed: ids known, specs right, a
        final record never changes, and nothing acknowledged is lost. The
        whole batch is accounted for before safety is judged: a batch is atomic."""
        durable = peer.store.durable
        judge = []
        for key, before in touched.items():
            after = durable.get(key)
            if after == before:
                continue
            prefix, job_id = key[:2], key[2:].decode()
            if job_id not in self.acked and not (self.model_periodic and self._model_run(peer, job_id)):
                raise InvariantViolation(f"{peer.name}: durable {key.decode()} for an id never acknowledged")
            if prefix == layout.JOB:
                if after is None:
                    if job_id in getattr(self, "model_final_wall", ()):
                        continue  # (--job-model) a short --keep forgotten: its step checked when (edge.py)
                    raise InvariantViolation(f"{peer.name}: home record of {job_id} deleted")
                if job_id in self.final:
                    raise InvariantViolation(
                        f"{peer.name}: final record of {job_id} changed: {job_record(self.final[job_id])} -> "
                        f"{job_record(after)}")
                record = job_record(after)
                self._check_spec(peer, job_id, record.spec, "j/")
                if record.state.final:
                    self.final[job_id] = after
                    if record.state is JobState.DONE:
                        self.report.jobs_done += 1
                judge.append((job_id, f"{peer.name} rewrote its record"))
            elif before is None:
                self.holders[job_id] += 1
                if prefix == layout.HELD:
                    self._check_spec(peer, job_id, held_job(after).spec, "q/")
            elif after is None:
                self.holders[job_id] -= 1
                judge.append((job_id, f"{peer.name} deleted {key.decode()}"))
        for job_id, why in judge:
            self._check_safe(job_id, why)

    def _check_safe(self, job_id: str, why: str) -> None:
        """An acknowledged job is safe while its home's durable record is final
        (or waiting or scheduled: held nowhere until it is released), or some
        store (of a live or a crashed peer) durably holds it to run (q/) or
        holds its result for the home (x/)."""
        if job_id in self.final or self.holders[job_id] > 0:
            return
        home = self.peers[self.home_of[job_id]]
        raw = home.store.durable.get(layout.key(layout.JOB, job_id))
        rec = job_record(raw) if raw is not None else None
        if rec is not None and rec.state in (JobState.WAITING, JobState.SCHEDULED):
            return  # (--job-model) waiting for its dependencies or its due time: only its home's record holds it
        if rec is None and self.model_parent and self._model_unmade(job_id):
            return  # (--job-model) an array's element not made yet: its array's record holds it
        state = f"{rec.state.value} attempt {rec.attempt} at {rec.executor}" if rec else "no record"
        raise InvariantViolation(f"acknowledged job {job_id} lost ({why}): home {home.name} says {state}; "
                                 f"no store holds it or its result")

    def _liveness_failure(self, deadline: float) -> None:
        missing = [n for n in range(self.opts.jobs) if n not in self.acked_job]
        if missing:
            raise InvariantViolation(f"liveness: {len(missing)} submissions never acknowledged by t={deadline:g}s "
                                     f"(e.g. job #{missing[0]})")
        open_ids = [j for j in self.acked if j not in self.final and j not in self.model_parent
                    and j not in self.model_periodic]
        examples = []
        for job_id in open_ids[:5]:
            home = self.peers[self.home_of[job_id]]
            raw = home.store.durable.get(layout.key(layout.JOB, job_id))
            if raw is None:  # (an array's element not made yet)
                examples.append(f"{job_id} not made by its home {home.name}")
                continue
            rec = job_record(raw)
            where = [p.name for p in self.peers if layout.key(layout.HELD, job_id) in p.store.durable]
            examples.append(f"{job_id} {rec.state.value} attempt {rec.attempt} executor {rec.executor or '-'} "
                            f"held by {where}")
        raise InvariantViolation(
            f"liveness: {len(open_ids)} acknowledged jobs not final {self.opts.liveness_s:g}s after faults "
            f"stopped: " + "; ".join(examples))
