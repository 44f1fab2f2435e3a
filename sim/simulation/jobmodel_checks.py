"""The job model's checks in the simulation (`--job-model`; the workload
and its doc: sim/simulation/jobmodel.py): at every start of a job, after
every step that started one, and the verdict on every final record once the
run converged. A mixin of `Simulation`.
"""

from __future__ import annotations

from executor.core import StartJob
from executor.core.ids import parent_of
from executor.core.jobs import JobState
from executor.core.protocol import split_job_id
from sim.simulation.base import InvariantViolation, _Peer
from sim.simulation.invariants import job_record
from sim.simulation.jobmodel import _AT, _DELAY, _FAIL, markers
from storage import layout


class _Final:
    """What the verdict knows of an array: the state it must end in."""

    __slots__ = ("state",)

    def __init__(self, state: JobState) -> None:
        self.state = state


class JobModelChecksMixin:
    """What the job model's options promise, checked (only with `Options.job_model`)."""

    # -- checks at a start ---------------------------------------------------

    def _model_start(self, peer: _Peer, start: StartJob) -> None:
        job_id = start.job_id
        home = self.peers[self.by_name[split_job_id(job_id)[0]]]
        n = self.acked.get(job_id)
        if n is not None:
            spec = self.specs[n]
        else:  # started at home before its acknowledgement went out
            spec = home.core.records[job_id].spec
        if not start.after_sync:
            # (One carried out after its batch's sync was decided in an
            # earlier step, against the queue as it was then.)
            self.model_started.append(start.spec.priority)
        if (start.spec.priority, start.spec.slots) != (spec.priority, spec.slots):
            raise InvariantViolation(f"{peer.name}: started {job_id} at priority {start.spec.priority} on "
                                     f"{start.spec.slots} slots, submitted at {spec.priority} on {spec.slots}")
        if (start.spec.env, start.spec.cwd) != (spec.env, spec.cwd):
            raise InvariantViolation(f"{peer.name}: started {job_id} with env {start.spec.env} in "
                                     f"{start.spec.cwd!r}, submitted with env {spec.env} in {spec.cwd!r}")
        self.model["env_cwd_starts_checked"] += bool(spec.env or spec.cwd)
        self.model_width[job_id] = spec.slots
        width = sum(self.model_width[j] for j in peer.jobs)
        if width > peer.core.slots:
            raise InvariantViolation(f"{peer.name}: started {job_id}: its running jobs take {width} slots of "
                                     f"{peer.core.slots}")
        mark = markers(spec.command) if spec.command else {}
        if _DELAY in mark or _AT in mark:
            held = peer.core.running[job_id]
            due = mark[_AT] if _AT in mark else held.submitted_at + mark[_DELAY]
            seen = max(home.wall_high, self.now + home.wall_offset)
            if seen < due:
                raise InvariantViolation(
                    f"{peer.name}: started {job_id} attempt {start.attempt}, due at {due:.3f} on {home.name}'s "
                    f"wall clock, which has shown at most {seen:.3f}")
            self.model["delayed_starts_checked"] += 1
        for dep in spec.after + spec.after_any:
            state, durable = self._model_state(dep)
            ok = state is JobState.DONE if dep in spec.after else state.final
            if not ok:
                kind = "afterok" if dep in spec.after else "afterany"
                raise InvariantViolation(f"{peer.name}: started {job_id} attempt {start.attempt} while its {kind} "
                                         f"dependency {dep} is {state.value}{'' if durable else ' (in memory)'}")
            if not durable:
                self.model["early_dependent_starts"] += 1
        if spec.dependencies:
            self.model["dependent_starts_checked"] += 1
        parent = parent_of(job_id)
        if parent in self.model_parent:
            self._model_check_cap(parent, home)

    def _model_check_cap(self, parent: str, home: _Peer) -> None:
        """`%M`: elements of one array running anywhere that are not final
        at its home are at most M (a copy of a final element may still run:
        it is fenced, and counts for nothing)."""
        cap = self.model_arrays[self.model_parent[parent]][2]
        if not cap:
            return
        elements = set(self._model_elements(parent))
        running = {j for p in self.peers if p.up for j in p.jobs if j in elements}
        live = {j for j in running if not self._model_state(j)[0].final}
        self.model["array_cap_checks"] += 1
        if len(live) > cap:
            raise InvariantViolation(f"array {parent} (%{cap}) runs {len(live)} live elements at once: {sorted(live)}")

    def _model_state(self, job_id: str) -> tuple[JobState, bool]:
        """A job's (or an array's) state at its home: (state, whether durably so)."""
        if job_id in self.model_parent:
            states = [self._model_state(e) for e in self._model_elements(job_id)]
            if all(st.final for st, _ in states):
                done = all(st is JobState.DONE for st, _ in states)
                return (JobState.DONE if done else JobState.FAILED), all(durable for _, durable in states)
            return JobState.RUNNING, True
        raw = self.final.get(job_id)
        if raw is not None:
            return job_record(raw).state, True
        home = self.peers[self.home_of[job_id]]
        if home.up and job_id in home.core.records:
            state = home.core.records[job_id].state
            return state, not state.final
        raw = home.store.durable.get(layout.key(layout.JOB, job_id))
        return (job_record(raw).state if raw is not None else JobState.QUEUED), True

    def _model_check_priorities(self, peer: _Peer) -> None:
        """Every job this step started outranks (or ties) every job it left queued."""
        started, self.model_started = self.model_started, []
        core = peer.core
        # The queue's order is the dispatch order; a job wider than this
        # peer is skipped there (it waits to be stolen).
        for job_id, job in core.queue.items():
            if job.spec.slots <= core.slots:
                if job.spec.priority > min(started):
                    raise InvariantViolation(f"{peer.name}: started a priority-{min(started)} job while a "
                                             f"priority-{job.spec.priority} job ({job_id}) stays queued")
                break

    # -- the verdict -------------------------------------------------------------

    def _model_verdict(self) -> None:
        """Every final record against its job's options (after convergence)."""
        m = self.model
        states = {job_id: job_record(raw) for job_id, raw in self.final.items()}
        for parent, n in self.model_parent.items():
            # An array ends done when every element did, else failed (none is cancelled by hand here).
            ends = [states[e].state for e in self._model_elements(parent)]
            expected = JobState.DONE if all(st is JobState.DONE for st in ends) else JobState.FAILED
            states[parent] = _Final(expected)
            home = self.peers[self.home_of[self._model_elements(parent)[0]]]
            shown = home.core.parents.get(parent)
            if shown is None or not shown.final or shown.state != expected.value:
                raise InvariantViolation(f"array {parent}: its elements ended {[st.value for st in ends]}, its home "
                                         f"{home.name} shows it {shown.state if shown else 'unknown'}")
        self._model_periodic_verdict()
        for job_id, n in self.acked.items():
            if job_id in self.model_parent or job_id in self.model_periodic:
                continue
            spec, rec = self.specs[n], states[job_id]
            fail = markers(spec.command).get(_FAIL, 0) if spec.command else 0
            m["retried_tries"] += rec.tries - 1
            if self.starts_of[job_id] > rec.tries:
                m["jobs_run_more_than_their_tries"] += 1
            what = f"{job_id} ({rec.state.value} try {rec.tries}/{spec.tries} attempt {rec.attempt} " \
                   f"reason {rec.reason}; retries {spec.retries}, fail-attempts {fail:g}, after {list(spec.after)}, " \
                   f"after-any {list(spec.after_any)})"
            if rec.spec.keep_s != spec.keep_s:
                raise InvariantViolation(f"{what}: its record keeps it {rec.spec.keep_s} s, submitted --keep "
                                         f"{spec.keep_s}")
            if rec.tries > spec.tries:
                raise InvariantViolation(f"{what}: more tries than its retries allow")
            if rec.state is JobState.FAILED and rec.tries != spec.tries:
                raise InvariantViolation(f"{what}: failed with tries left")
            bad = [d for d in spec.after if states[d].state is not JobState.DONE]
            if rec.reason == "dependency-not-found":
                raise InvariantViolation(f"{what}: cancelled dependency-not-found, but every dependency is an "
                                         f"acknowledged job ({', '.join(f'{d} {states[d].state.value}' for d in spec.dependencies)})")
            if bad:
                if rec.state is not JobState.CANCELLED or rec.reason != "dependency-failed":
                    raise InvariantViolation(f"{what}: its afterok dependency {bad[0]} ended "
                                             f"{states[bad[0]].state.value}, so it must be cancelled dependency-failed")
                m["dependency_cancelled"] += 1
                continue
            if rec.state is JobState.CANCELLED and rec.reason == "cancelled" and parent_of(job_id) in self.model_periodic:
                continue  # a periodic job's live run, cancelled with it
            if rec.state is JobState.CANCELLED:
                raise InvariantViolation(f"{what}: cancelled, but nobody cancels and its dependencies succeeded")
            if rec.state is JobState.DONE:
                if rec.exit_code != 0 or rec.attempt <= fail:
                    raise InvariantViolation(f"{what}: done by attempt {rec.attempt} exit {rec.exit_code}, "
                                             f"but attempts up to {fail:g} fail")
                m["done_after_retry"] += rec.tries > 1
            else:
                m["failed"] += 1
                if fail <= spec.retries:
                    raise InvariantViolation(f"{what}: failed, but its attempts past {fail:g} succeed and it had "
                                             f"{spec.retries} retries")
                if rec.attempt > fail:
                    raise InvariantViolation(f"{what}: failed by attempt {rec.attempt}, which succeeds")
