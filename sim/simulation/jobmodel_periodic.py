"""The job model's periodic jobs and short `--keep` in the simulation (a
mixin of `world.Simulation`, split from sim/simulation/jobmodel.py, which
draws them; the module's doc there says what is checked).

* Periodic jobs (`--every 1-2 s`): a CANCEL to the home after 2.5-4.5
  periods; runs (`<id>.<k>`) registered as they first become durable; each
  made no earlier than its due time on its home's wall clock (the due time
  the parent's record held before the write that counts it), for strictly
  increasing due times; none made after the batch of the CANCEL's ack.
* Short `--keep` (0.5-2 s, jobs nothing depends on): forgotten no earlier than
  `--keep` after the step that made the record final, on the home's clock
  (the core's `_wall` in both steps: exact through any clock step), across
  restarts of the home too (the record keeps when its home made it final).
"""

from __future__ import annotations

from executor.core import ClientRequest
from executor.core.ids import parent_of
from executor.core.parents import Parent
from executor.core.protocol import Cancel
from sim.simulation.base import _EVENT, _SUBMIT, InvariantViolation, _Peer
from sim.simulation.invariants import job_record
from sim.simulation.jobmodel import _CANCEL_AFTER_PERIODS, _CANCEL_VERB, _SHORT_KEEP_S
from storage import layout


class JobModelPeriodicMixin:
    """Periodic jobs and short --keep (only with `Options.job_model`)."""

    # -- periodic jobs -----------------------------------------------------------

    def _model_periodic_acked(self, job_id: str, n: int, peer: _Peer) -> bool:
        raw = peer.store.durable.get(layout.key(layout.PARENT, job_id))
        if raw is None:
            raise InvariantViolation(f"{peer.name} acknowledged periodic job {job_id} before its record was durable")
        parent = Parent.from_wire(layout.decode(raw, "parent"))
        if parent.spec != self.specs[n] or parent.every_s != self.model_every[n]:
            raise InvariantViolation(f"{peer.name}: periodic job {job_id} stored as {parent}, submitted "
                                     f"{self.specs[n]} every {self.model_every[n]}")
        self.model_periodic[job_id] = n
        self.model_runs[job_id] = []
        periods = self.model_spec_rng.uniform(*_CANCEL_AFTER_PERIODS)
        self._push(self.now + periods * self.model_every[n], _SUBMIT, n, _CANCEL_VERB)
        return True

    def _model_cancel(self, n: int) -> None:
        """Send (again) the CANCEL of periodic job `n` to its home."""
        job_id = self.acked_job[n]
        if job_id in self.model_cancelled_next:
            return
        peer = self.peers[self.home_of[job_id]]
        if not peer.up:
            self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n, _CANCEL_VERB)
            return
        self.tokens += 1
        token = (1 + n % 64, self.tokens)
        peer.clients[token] = (n, _CANCEL_VERB)
        self._push(self.now + self.net_rng.uniform(0.00005, 0.0005), _EVENT, peer.idx, peer.epoch,
                   ClientRequest(token, Cancel(job_id)))

    def _model_cancel_reply(self, peer: _Peer, n: int, reply) -> None:
        """A CANCEL's reply, after its batch: the durable record is cancelled
        and no run is made from now on (checked as runs appear)."""
        job_id = self.acked_job[n]
        raw = peer.store.durable.get(layout.key(layout.PARENT, job_id))
        parent = Parent.from_wire(layout.decode(raw, "parent")) if raw is not None else None
        if not reply.data.startswith(b"OK "):
            if parent is None or not parent.cancelled:
                self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n, _CANCEL_VERB)
                return
        elif parent is None or not parent.cancelled:
            raise InvariantViolation(f"{peer.name} acknowledged CANCEL {job_id}, its durable record says "
                                     f"{parent}")
        self.model_cancelled_next[job_id] = parent.next_index
        self.model_periodic_open -= 1
        self.model["periodic_cancels"] += 1

    def _model_run(self, peer: _Peer, job_id: str) -> bool:
        """A run (child) of an acknowledged periodic job, seen durable for
        the first time: registered, unless made after its CANCEL's batch."""
        parent = parent_of(job_id)
        if parent not in self.model_periodic:
            return False
        index = int(job_id.rpartition(".")[2])
        if index >= self.model_cancelled_next.get(parent, index + 1):
            raise InvariantViolation(f"{peer.name} made run {job_id} after the batch of its CANCEL (next run then "
                                     f"{self.model_cancelled_next[parent]})")
        self.acked[job_id] = self.model_periodic[parent]
        self.home_of[job_id] = self.home_of[parent]
        self.model_runs[parent].append(job_id)
        self.final_target += 1
        self.model["periodic_runs"] += 1
        return True

    def _model_parent_write(self, peer: _Peer, key: bytes, value: bytes, wall: float) -> None:
        """A periodic job's record written in a step: when it counts a new
        run, that run was made for the due time the record held before, and
        no earlier on the home's wall clock."""
        parent = Parent.from_wire(layout.decode(value, "parent"))
        if not parent.periodic:
            return
        job_id = parent.job_id
        seen = self.model_periodic_seen.get(job_id)
        if seen is None or seen[0] != peer.epoch:  # first write of this life: before it, the durable record
            raw = peer.store.durable.get(key)
            before = Parent.from_wire(layout.decode(raw, "parent")) if raw is not None else None
            seen = (peer.epoch, 1, parent.submitted_at) if before is None else (peer.epoch, before.next_index,
                                                                                 before.due_at)
        _, index, due = seen
        if parent.next_index == index + 1:
            if wall < due:
                raise InvariantViolation(f"{peer.name} made run {job_id}.{index} at {wall:.3f} on its wall clock, "
                                         f"due at {due:.3f}")
            self.model_run_due[f"{job_id}.{index}"] = due
        elif parent.next_index != index:
            raise InvariantViolation(f"{peer.name}: periodic job {job_id} went from run {index} to "
                                     f"{parent.next_index} in one write")
        self.model_periodic_seen[job_id] = (peer.epoch, parent.next_index, parent.due_at)

    def _model_periodic_verdict(self) -> None:
        """Every periodic job cancelled and final at its home; its runs made
        for strictly later due times, one after another."""
        for job_id, runs in self.model_runs.items():
            home = self.peers[self.home_of[job_id]]
            shown = home.core.parents.get(job_id)
            if shown is None or not shown.final or not shown.cancelled:
                raise InvariantViolation(f"periodic job {job_id}: its home {home.name} shows it {shown}")
            last = None
            for run in sorted(runs, key=lambda r: int(r.rpartition(".")[2])):
                due = self.model_run_due.get(run)
                if due is None:
                    raise InvariantViolation(f"periodic job {job_id}: run {run} made, never seen counted")
                if last is not None and due <= last:
                    raise InvariantViolation(f"periodic job {job_id}: run {run} due at {due:.3f}, not after the "
                                             f"previous run's {last:.3f}")
                last = due
                self.model["periodic_dues_checked"] += 1

    def _model_short_keep(self, n: int) -> bool:
        keep = self.specs[n].keep_s
        return keep is not None and keep <= _SHORT_KEEP_S[1]

    def _model_writes(self, peer: _Peer, writes: list) -> None:
        if self.model["short_keep"]:
            self._model_keep_writes(peer, writes)
        if self.model["periodic"]:
            wall = self.now + peer.wall_offset
            for key, value in writes:
                if key[:2] == layout.PARENT and value is not None:
                    self._model_parent_write(peer, key, value, wall)

    def _model_keep_writes(self, peer: _Peer, writes: list) -> None:
        """A step's writes: the home's wall when a short-kept record became
        final, and its forgetting no earlier than --keep after that on the
        same clock (the core's `_wall` in both steps: exact, whatever steps
        the clock took in between)."""
        wall = self.now + peer.wall_offset
        for key, value in writes:
            if key[:2] != layout.JOB:
                continue
            job_id = key[2:].decode()
            n = self.acked.get(job_id)
            if n is None:  # (a job may end before its acknowledgement is out)
                if value is not None:
                    if job_record(value).state.final:
                        self.model_final_unacked.setdefault(job_id, (wall, peer.epoch))
                    else:
                        self.model_final_unacked.pop(job_id, None)
                continue
            if not self._model_short_keep(n):
                continue
            if job_id in self.model_final_unacked:
                self.model_final_wall.setdefault(job_id, self.model_final_unacked.pop(job_id))
            if value is not None:
                if not job_record(value).state.final:
                    self.model_final_wall.pop(job_id, None)  # (final in a life that crashed before its sync)
                elif job_id not in self.model_final_wall:
                    self.model_final_wall[job_id] = (wall, peer.epoch)
                continue
            keep = self.specs[n].keep_s
            if job_id not in self.model_final_wall:
                raise InvariantViolation(f"{peer.name} forgot {job_id} (--keep {keep:g}), never final")
            final_at, epoch = self.model_final_wall[job_id]
            # (Across a restart too: the record keeps when its home made it final.)
            self.model["forgotten_after_restart"] += epoch != peer.epoch
            if wall < final_at + keep:
                raise InvariantViolation(f"{peer.name} forgot {job_id} {wall - final_at:.3f} s after it became final "
                                         f"on its wall clock, --keep {keep:g}")
            self.model["forgotten_checked"] += 1
