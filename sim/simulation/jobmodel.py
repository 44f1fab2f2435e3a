"""The job model in the simulation (`--job-model`, issue 15): SUBMIT's
options drawn for some jobs, the simulated runner's rule for failing tries,
and the checks that know them (those in sim/simulation/jobmodel_checks.py).

Off by default: without it no random number is drawn and no check runs, so a
seed's trace is the one it had before the job model existed.

The workload (one more seeded stream, drawn after all the others):

* priorities in -3..5 for some jobs; `--slots 2` for some (peers of 2 slots);
* retries (1-3, some with a back-off of 50-400 ms); the simulated runner
  fails a run while its *attempt* is at most the job's `fail-attempts=K`
  marker (in the sleep job's command, which travels with the job), so a job
  with K <= retries ends done, one with K > retries usually fails (unless a
  crash's re-issue already pushed its attempt past K: attempts count retries
  and re-issues, tries only retries, so attempt >= try);
* `--delay` (0.1-3 s, on its home's wall clock) or `--at` (a unix time on
  the client's clock, the simulation's epoch + now: homes are skewed by
  minutes, so some are due at once and some minutes late);
* arrays (`--array A-B`, 2-5 elements, half of them `%2`), with any of the
  options above but a due time;
* dependencies (`--after`, `--after-any`, 1-3 ids) on jobs (and arrays)
  acknowledged earlier, half of them on the very home the job is sent to;
* `--env` (1-3 entries, values with spaces and `=`), `--cwd` and `--keep`
  from a stream of their own (seeded from the model stream's state, which it
  does not advance: every other draw is as it was before them). The
  simulated runner ignores env and cwd: a start must carry them as
  submitted (the spec a peer starts equals the one submitted, through every
  handoff, steal and re-issue; the invariants check every stored copy). Keep
  is drawn 1-2 h, past any skew, step or catch-up of a run's wall clocks: no
  record is forgotten within a run (the invariants treat a deleted home
  record as a loss), so what is checked is that it survives in the home's
  record.

The checks:

* at every start: a delayed job's home clock has reached its due time (the
  highest wall time that home's clock has shown); every afterok dependency is
  done and every afterany dependency final (durably at its home, or in its
  home's memory: the home releases a same-home dependent in the step that
  finishes its dependency, before that batch is synced: counted, see
  `early_dependent_starts`); a started job has a priority at least that of
  every job left queued on its peer after the step that fits the peer
  (dispatch is the last thing a step does, and never lets a job overtake a
  wider one queued before it); the jobs running on a peer take no more than
  their peer's slots;
* at every start of an element of a capped array: its elements running
  anywhere and not final at its home number at most the cap;
* at the end, on every home's final record: tries within the job's; failed
  only on its last try; done only by an attempt past K, and always when
  K <= retries; cancelled `dependency-failed` exactly when an afterok
  dependency is not done; never `dependency-not-found` (every dependency is
  an acknowledged job); an array done when every element is, else failed.

Two tries of one job may run at once, as two attempts may (an executor the
home cannot reach keeps running the failed try's older attempt): not checked.

Wall-clock steps make scheduled jobs late by design (a home's clock stepped
back by 10 minutes delays its due jobs by as much; docs/cluster.md). Once the
faults stop, every `_CATCH_UP_EVERY_S` the clock of a peer still holding a
job due later is stepped forward to its last due time — only as far as the
steps it took and the drawn delays explain, else a due time was computed
wrong — so every acknowledged job still ends final within the liveness bound.
"""

from __future__ import annotations

import random
from dataclasses import replace

from executor.core import StartJob
from executor.core.ids import parent_of
from executor.core.jobs import JobState
from executor.core.parents import Parent
from executor.core.protocol import Submit, split_job_id
from sim.simulation.base import _CATCH_UP, _WALL_EPOCH_S, InvariantViolation, _Peer
from storage import layout

_PRIORITY_SHARE = 0.3
_PRIORITIES = (-3, 5)
_RETRY_SHARE = 0.25
_RETRIES = (1, 3)
_BACKOFF_SHARE = 0.5  # of the jobs with retries
_BACKOFF_S = (0.05, 0.4)
_FAIL_ONCE_SHARE = 0.05  # no retries, its only try fails: afterok dependents must be cancelled
_DELAY_SHARE = 0.15
_DELAY_S = (0.1, 3.0)
_AT_SHARE = 0.05
_AT_S = (0.1, 2.0)
_WIDE_SHARE = 0.1  # jobs taking 2 slots (--slots 2; with peers of 2 slots or more)
_ARRAY_SHARE = 0.05  # --array A-B (2-5 elements), half of them capped %2
_ARRAY_FIRST_MAX, _ARRAY_MORE = 2, (1, 4)
_ARRAY_CAP = 2
_DEPENDENT_SHARE = 0.25
_DEPENDENCIES_MAX = 3
_SAME_HOME_SHARE = 0.5
_RECENT = 40  # dependencies are drawn among the latest acknowledged jobs: many are not final yet
_ENV_SHARE, _ENV_ENTRIES_MAX = 0.2, 3
_CWD_SHARE, _CWDS = 0.1, ("/tmp", "work/sub dir", "rel")
_KEEP_SHARE, _KEEP_S = 0.1, (3600.0, 7200.0)  # past any clock step of a run: never forgotten in one
# Half the kept jobs that are no array keep 0.5-2 s: forgotten within the run.
# Nothing depends on them (a forgotten dependency is `dependency-not-found`).
_SHORT_KEEP_SHARE, _SHORT_KEEP_S = 0.5, (0.5, 2.0)
# Periodic jobs (`--every S`; no array, due time, dependency or short keep):
# cancelled after a few periods. S from the product's floor (EVERY_MIN_S, 1 s).
_PERIODIC_SHARE, _EVERY_S = 0.04, (1.0, 2.0)
_CANCEL_AFTER_PERIODS = (2.5, 4.5)
_CATCH_UP_EVERY_S = 3.0
_CATCH_UP_SLACK_S = 1.0

_FAIL, _DELAY, _AT = "fail-attempts", "delay", "at"
_CANCEL_VERB = "cancel"  # a _SUBMIT heap entry (and a client's token) for a CANCEL, not a SUBMIT


def markers(command: str) -> dict[str, float]:
    """A job-model sleep job's markers (`fail-attempts=2 delay=0.5`)."""
    out = {}
    for word in command.split():
        name, _, value = word.partition("=")
        out[name] = float(value)
    return out


class JobModelMixin:
    """The job model's workload and checks (only with `Options.job_model`)."""

    def _init_job_model(self, rng) -> None:
        self.model_rng = rng
        # Env, cwd, keep: a stream seeded without advancing `rng` (a str seed is hashed by SHA-512: the same in every process).
        self.model_spec_rng = random.Random(str(rng.getstate()[1][:16]))
        self.model_submits: dict[int, Submit] = {}
        self.model_delay: dict[int, float] = {}  # job number -> --delay
        self.model_at: dict[int, float] = {}  # job number -> --at offset from the client's clock
        self.model_acked: list[str] = []
        self.model_acked_by_home: dict[int, list[str]] = {}
        self.model_started: list[int] = []  # priorities started in the current step
        self.model_width: dict[str, int] = {}  # job id -> the slots it takes
        self.model_arrays: dict[int, tuple[int, int, int]] = {}  # job number -> (first, last, cap)
        self.model = dict.fromkeys((
            "priority", "wide", "arrays", "array_elements", "array_cap_checks", "retries", "backoff", "fail_once", "delay", "at", "dependents", "same_home_dependencies",
            "other_home_dependencies", "array_dependencies", "retried_tries", "dependency_cancelled", "failed", "done_after_retry",
            "early_dependent_starts", "delayed_starts_checked", "dependent_starts_checked", "clock_catch_ups",
            "jobs_run_more_than_their_tries", "env", "cwd", "keep", "env_cwd_starts_checked", "short_keep", "forgotten_checked",
            "forgotten_after_restart", "periodic", "periodic_runs",
            "periodic_cancels", "periodic_dues_checked"), 0)
        self.model_every: dict[int, float] = {}  # job number -> --every
        self.model_runs: dict[str, list[str]] = {}  # periodic job -> its runs (children) seen durable
        self.model_cancelled_next: dict[str, int] = {}  # periodic job -> its next run's index at its CANCEL's ack
        self.model_run_due: dict[str, float] = {}  # run -> the due time it was made for (the home's wall clock)
        self.model_periodic_seen: dict[str, tuple[int, int, float]] = {}  # periodic job -> (epoch, next, due)
        # (Short --keep) job id -> its home's wall clock in the step that made
        # its record final (the core's `_wall` there: its expiry counts from it).
        self.model_final_wall: dict[str, tuple[float, int]] = {}  # (and the home's life then: its epoch)
        self.model_final_unacked: dict[str, tuple[float, int]] = {}  # the same, for a record final before its ack

    def _draw_model(self, n: int) -> None:
        """Options for job `n`, all but its dependencies (drawn when it is
        first sent: they name jobs acknowledged by then)."""
        rng, spec, m = self.model_rng, self.specs[n], self.model
        words = []
        priority = rng.randint(*_PRIORITIES) if rng.random() < _PRIORITY_SHARE else 0
        retries, backoff = 0, 0.0
        roll = rng.random()
        if roll < _RETRY_SHARE:
            retries = rng.randint(*_RETRIES)
            words.append(f"{_FAIL}={rng.randint(0, retries + 1)}")
            if rng.random() < _BACKOFF_SHARE:
                backoff = round(rng.uniform(*_BACKOFF_S), 3)
                m["backoff"] += 1
            m["retries"] += 1
        elif roll < _RETRY_SHARE + _FAIL_ONCE_SHARE:
            words.append(f"{_FAIL}=1")
            m["fail_once"] += 1
        if rng.random() < _ARRAY_SHARE:
            first = rng.randint(0, _ARRAY_FIRST_MAX)
            last = first + rng.randint(*_ARRAY_MORE)
            self.model_arrays[n] = (first, last, _ARRAY_CAP if rng.random() < 0.5 else 0)
            self.final_target += last - first  # its elements, not the array, end final
            m["arrays"] += 1
            m["array_elements"] += last - first + 1
        roll = 1.0 if n in self.model_arrays else rng.random()  # (an array's elements are due with it: none here)
        if roll < _DELAY_SHARE:
            self.model_delay[n] = round(rng.uniform(*_DELAY_S), 3)
            words.append(f"{_DELAY}={self.model_delay[n]}")
            m["delay"] += 1
        elif roll < _DELAY_SHARE + _AT_SHARE:
            self.model_at[n] = round(rng.uniform(*_AT_S), 3)
            m["at"] += 1
        slots = 2 if self.opts.slots >= 2 and rng.random() < _WIDE_SHARE else 1
        m["priority"] += priority != 0
        m["wide"] += slots > 1
        extra = self._draw_env_cwd_keep(n not in self.model_arrays)
        self.specs[n] = replace(spec, command=" ".join(words), priority=priority, retries=retries, backoff_s=backoff,
                                slots=slots, **extra)
        spec_rng = self.model_spec_rng  # (drawn last from its stream: every earlier draw is as before)
        if spec_rng.random() < _PERIODIC_SHARE and not self._model_short_keep(n) and all(
                n not in d for d in (self.model_arrays, self.model_delay, self.model_at)):
            self.model_every[n] = round(spec_rng.uniform(*_EVERY_S), 3)
            self.final_target -= 1  # it has no record of its own; its runs count as they appear
            self.model_periodic_open += 1
            m["periodic"] += 1

    def _draw_env_cwd_keep(self, short_ok: bool) -> dict:
        rng, m, out = self.model_spec_rng, self.model, {}
        if rng.random() < _ENV_SHARE:
            out["env"] = tuple((f"PJ_{i}", f"v {rng.randrange(1000)}=x") for i in range(rng.randint(1, _ENV_ENTRIES_MAX)))
            m["env"] += 1
        if rng.random() < _CWD_SHARE:
            out["cwd"] = rng.choice(_CWDS)
            m["cwd"] += 1
        if rng.random() < _KEEP_SHARE:
            short = rng.random() < _SHORT_KEEP_SHARE and short_ok
            out["keep_s"] = round(rng.uniform(*(_SHORT_KEEP_S if short else _KEEP_S)), 3)
            m["keep"] += 1
            m["short_keep"] += short
        return out

    def _model_submit(self, n: int, peer: _Peer) -> Submit:
        """Job `n`'s SUBMIT, the same every time it is sent again."""
        command = self.model_submits.get(n)
        if command is not None:
            return command
        rng, spec = self.model_rng, self.specs[n]
        after, after_any = [], []
        if rng.random() < _DEPENDENT_SHARE and self.model_acked and n not in self.model_every:
            pool = self.model_acked_by_home.get(peer.idx, ())
            if not pool or rng.random() >= _SAME_HOME_SHARE:
                pool = self.model_acked
            pool = pool[-_RECENT:]
            for dep in rng.sample(pool, min(len(pool), rng.randint(1, _DEPENDENCIES_MAX))):
                (after if rng.random() < 0.7 else after_any).append(dep)
                same = split_job_id(dep)[0] == peer.name
                self.model["same_home_dependencies" if same else "other_home_dependencies"] += 1
                self.model["array_dependencies"] += dep in self.model_parent
            self.model["dependents"] += 1
        at = self.model_at.get(n)
        if after or after_any:
            spec = self.specs[n] = replace(spec, after=tuple(after), after_any=tuple(after_any))
        if at is not None:
            at = _WALL_EPOCH_S + self.now + at  # the client's clock: the epoch, unskewed
            spec = self.specs[n] = replace(spec, command=f"{spec.command} {_AT}={at!r}".strip())
        command = self.model_submits[n] = Submit(spec, self.model_delay.get(n), at, self.model_arrays.get(n),
                                                 self.model_every.get(n))
        return command

    def _model_acked(self, job_id: str, home: int) -> bool:
        """A submission acknowledged; True for an array (its record is a
        parent, g/, with its elements: they are acknowledged with it)."""
        n = self.acked[job_id]
        if not self._model_short_keep(n) and n not in self.model_every:
            # (Nothing depends on a job forgotten within the run, nor on a periodic one.)
            self.model_acked.append(job_id)
            self.model_acked_by_home.setdefault(home, []).append(job_id)
        if n in self.model_every:
            return self._model_periodic_acked(job_id, n, self.peers[home])
        array = self.model_arrays.get(n)
        if array is None:
            return False
        peer = self.peers[home]
        raw = peer.store.durable.get(layout.key(layout.PARENT, job_id))
        if raw is None:
            raise InvariantViolation(f"{peer.name} acknowledged array {job_id} before its record was durable")
        parent = Parent.from_wire(layout.decode(raw, "parent"))
        if parent.spec != self.specs[n] or (parent.first, parent.last, parent.cap) != array:
            raise InvariantViolation(f"{peer.name}: array {job_id} stored as {parent}, submitted {self.specs[n]} "
                                     f"{array}")
        self.model_parent[job_id] = n
        for i in range(array[0], array[1] + 1):
            element = f"{job_id}.{i}"
            self.acked[element] = n
            self.home_of[element] = home
        return True

    def _model_elements(self, parent: str) -> list[str]:
        first, last, _ = self.model_arrays[self.model_parent[parent]]
        return [f"{parent}.{i}" for i in range(first, last + 1)]

    def _model_unmade(self, job_id: str) -> bool:
        """An element its array's home has not made yet (capped: made as
        others end): safe while the array's durable record says so."""
        parent = parent_of(job_id)
        if parent not in self.model_parent:
            return False
        raw = self.peers[self.home_of[job_id]].store.durable.get(layout.key(layout.PARENT, parent))
        index = int(job_id.rpartition(".")[2])
        return raw is not None and Parent.from_wire(layout.decode(raw, "parent")).next_index <= index

    def _model_jobs_final(self) -> int:
        """Submissions whose job (every element of an array) is final."""
        done = 0
        for job_id in self.acked_job.values():
            ids = self._model_elements(job_id) if job_id in self.model_parent else (job_id,)
            if job_id in self.model_periodic:
                ids = self.model_runs[job_id] if job_id in self.model_cancelled_next else (job_id,)
            done += all(j in self.final for j in ids)
        return done

    def _model_outcome(self, start: StartJob) -> bool:
        """Whether this run fails (the simulated runner's rule)."""
        return bool(start.spec.command) and start.attempt <= markers(start.spec.command).get(_FAIL, 0)

    # -- the catch-up of the wall clocks -----------------------------------------

    def _model_catch_up(self) -> None:
        """Step forward the wall clock of every peer still holding a job due
        later, as far as its last due time (see the module's doc)."""
        if self.converged_at is not None:
            return
        self._push(self.now + _CATCH_UP_EVERY_S, _CATCH_UP)
        bound_extra = max(_DELAY_S[1], _AT_S[1], min(_BACKOFF_S[1] * 2 ** (_RETRIES[1] - 1),
                                                     self.config.retry_backoff_max_s)) + _CATCH_UP_SLACK_S
        for peer in self.peers:
            if not peer.up:
                continue
            wall = self.now + peer.wall_offset
            due = max((r.due_at for r in peer.core.records.values()
                       if r.state is JobState.SCHEDULED and r.due_at is not None), default=None)
            if due is None or due <= wall:
                continue
            late = due - wall
            bound = max(0.0, peer.wall_high - wall, _WALL_EPOCH_S + self.now - wall) + bound_extra
            if late > bound:
                raise InvariantViolation(f"{peer.name} holds a job due {late:.3f} s after its wall clock "
                                         f"({due:.3f}); no clock step or drawn delay explains more than {bound:.3f} s")
            peer.wall_high = max(peer.wall_high, wall)
            peer.wall_offset += late + 0.001
            self.model["clock_catch_ups"] += 1
            if self.opts.trace:
                self.out.write(f"{self.now!r} {peer.idx} CLOCK CATCH-UP {late + 0.001:+.3f}s\n")
