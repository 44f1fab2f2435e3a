"""The workload: clients that SUBMIT each job until one peer acknowledges it
(retrying elsewhere on a refused connection, a crash or an ERR), and the
sleep jobs, run as executor/runner.py runs them (a timeout ends them early).
"""

from __future__ import annotations

from executor.core import (
    ClientRequest,
    JobExited,
    KillJob,
    Reply,
    StartJob,
    read_result,
)
from executor.core.protocol import JobSpec, Submit, split_job_id
from sim.simulation.base import _EVENT, _JOB, _SUBMIT, InvariantViolation, _Peer
from sim.simulation.invariants import job_record
from storage import layout


class WorkloadMixin:
    """The simulated clients and job processes."""

    def _draw_spec(self) -> JobSpec:
        rng = self.job_rng
        if rng.random() < self.opts.long_jobs:
            return JobSpec("sleep", "", rng.randint(100, 1000))
        return JobSpec("sleep", "", rng.randint(0, 50))

    def _start_job(self, peer: _Peer, start: StartJob) -> None:
        if start.job_id in peer.jobs:
            raise InvariantViolation(f"{peer.name}: started {start.job_id} attempt {start.attempt} while "
                                     f"attempt {peer.jobs[start.job_id][0]} still runs there")
        if start.job_id not in self.acked and split_job_id(start.job_id)[0] != peer.name:
            raise InvariantViolation(f"{peer.name}: started {start.job_id}, an id never acknowledged")
        self.gen += 1
        peer.jobs[start.job_id] = (start.attempt, self.gen)
        if len(peer.jobs) > peer.core.slots:
            raise InvariantViolation(f"{peer.name}: {len(peer.jobs)} jobs running on {peer.core.slots} slots")
        self.report.starts += 1
        if start.attempt > 1:
            self.report.reexecutions += 1
        self.starts_of[start.job_id] += 1
        run_s = start.spec.sleep_ms / 1000
        if self.opts.job_model:
            self._model_start(peer, start)
        if self.opts.job_model and self._model_outcome(start):
            result = (start.job_id, start.attempt, self.gen, 1, None)  # this try fails (exit 1)
        elif run_s > start.timeout_s:
            result = (start.job_id, start.attempt, self.gen, None, "timeout")
            run_s = start.timeout_s
        else:
            result = (start.job_id, start.attempt, self.gen, 0, None)
        self._push(self.now + run_s, _JOB, peer.idx, peer.epoch, result)

    def _kill_job(self, peer: _Peer, kill: KillJob) -> None:
        running = peer.jobs.get(kill.job_id)
        if running is not None and running[0] == kill.attempt:
            del peer.jobs[kill.job_id]
            self._push(self.now, _EVENT, peer.idx, peer.epoch, JobExited(kill.job_id, kill.attempt, None, "cancelled"))

    def _submit(self, n: int) -> None:
        if n in self.acked_job:
            return
        if self.opts.submit_to == "one":
            peer = self.peers[0]
        else:
            peer = self.peers[self.client_rng.randrange(len(self.peers))]
        if not peer.up:
            # Connection refused: the client tries again shortly (elsewhere, with --submit-to all).
            self.report.submit_retries += 1
            self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n)
            return
        self.tokens += 1
        token = (1 + n % 64, self.tokens)  # (connection, request number), as node.py's tokens
        peer.clients[token] = n
        self._push(self.now + self.net_rng.uniform(0.00005, 0.0005), _EVENT, peer.idx, peer.epoch,
                   ClientRequest(token, self._model_submit(n, peer) if self.opts.job_model else Submit(self.specs[n])))

    def _reply(self, peer: _Peer, reply) -> None:
        n = peer.clients.pop(reply.token, None)
        if n is None:
            raise InvariantViolation(f"{peer.name}: reply for a request it never got: {reply!r}")
        if type(n) is tuple:  # (--job-model) a periodic job's CANCEL
            self._model_cancel_reply(peer, n[0], reply)
            return
        data = reply.data if type(reply) is Reply else read_result(peer.store, reply.job_id)
        if not data.startswith(b"OK "):
            self.report.submit_retries += 1
            self._push(self.now + self.client_rng.uniform(0.05, 0.2), _SUBMIT, n)
            return
        job_id = data[3:].decode().strip()
        if job_id in self.acked:
            raise InvariantViolation(f"{peer.name}: id {job_id} acknowledged twice "
                                     f"(jobs #{self.acked[job_id]} and #{n})")
        if n in self.acked_job:
            raise InvariantViolation(f"job #{n} acknowledged twice ({self.acked_job[n]}, {job_id})")
        home, _ = split_job_id(job_id)
        if home != peer.name:
            raise InvariantViolation(f"{peer.name} acknowledged {job_id}, an id naming another home")
        self.acked[job_id] = n
        self.acked_job[n] = job_id
        self.home_of[job_id] = peer.idx
        if self.opts.job_model and self._model_acked(job_id, peer.idx):
            return  # an array: its record and its elements are checked as they become durable
        raw = peer.store.durable.get(layout.key(layout.JOB, job_id))
        if raw is None:
            raise InvariantViolation(f"{peer.name} acknowledged {job_id} before its record was durable")
        self._check_spec(peer, job_id, job_record(raw).spec, "j/")
        # Checked once the batch that carried the ack is fully accounted for.
        self.ack_checks.append(job_id)
