"""The deterministic simulation (sim/simulate.py): fixed seeds, random seeds,
replay determinism, and proof that its checker can fail.

Every run here is a few hundred jobs on 5-8 peers with crashes, partitions,
link breaks, pauses, slow disks and wall-clock steps; a failure message carries
the seed and the command that replays it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest

from executor.core import PeerCore
from executor.core.jobs import JobState
from executor.core.messages import HandoffAck
from sim import simulate as sim
from tests.conftest import ROOT

FIXED_SEEDS = [1, 2, 3, 4, 5]


def _opts(seed: int, **kw) -> sim.Options:
    base = dict(peers=6, jobs=300, seed=seed, crash_every_s=0.8, partition_every_s=2.0, break_every_s=0.3,
                duration_s=6.0, pause_every_s=3.0, slow_disk_every_s=3.0, clock_step_every_s=1.5)
    base.update(kw)
    return sim.Options(**base)


def _check(report: sim.Report) -> None:
    assert report.ok, f"seed={report.seed}: {report.failure}\nreplay: {report.command}"
    assert report.jobs_acked == report.jobs == report.jobs_final


@pytest.mark.parametrize("seed", FIXED_SEEDS)
def test_fixed_seeds_pass(seed):
    report = sim.simulate(_opts(seed, peers=5 + seed % 4))
    _check(report)
    assert report.crashes + report.partitions + report.breaks > 0, "the run had no faults to survive"
    assert report.pauses + report.slow_disks + report.clock_steps > 0, "the run had no gray failures to survive"


def test_gray_failures_alone():
    """Pauses, slow disks and wall-clock steps, and nothing else: a paused peer's
    events and incoming messages really wait, and every job still finishes."""
    report = sim.simulate(_opts(21, crash_every_s=0, partition_every_s=0, break_every_s=0, pause_every_s=1.0,
                                slow_disk_every_s=1.0, clock_step_every_s=0.5))
    _check(report)
    assert report.pauses >= 2 and report.slow_disks >= 2 and report.clock_steps >= 4, report
    assert report.deferred > 0
    assert "--pause-every 1 --slow-disk-every 1 --clock-step-every 0.5" in report.command


def test_submit_to_one_peer():
    _check(sim.simulate(_opts(11, submit_to="one", crash_every_s=0.5)))


@pytest.mark.parametrize("run", [1, 2])
def test_random_seed(run):
    seed = random.SystemRandom().randrange(2**32)
    print(f"seed={seed}")
    _check(sim.simulate(_opts(seed)))


def test_same_seed_same_trace_different_seed_different_trace():
    a = sim.simulate(_opts(7, jobs=150))
    b = sim.simulate(_opts(7, jobs=150))
    c = sim.simulate(_opts(8, jobs=150))
    _check(a)
    assert a.trace_hash == b.trace_hash
    assert (a.starts, a.messages, a.events) == (b.starts, b.messages, b.events)
    assert a.trace_hash != c.trace_hash


def test_wire_codec_path_is_exercised():
    report = sim.simulate(_opts(9, jobs=100, wire=True))
    _check(report)
    assert report.wire and report.messages > 0


# ---------------------------------------------------------------------------
# The checker must be able to fail: plant bugs in the core and see them caught.


def _handoff_dropping_jobs(self, msg, now):
    """A receiver that acks a handoff without holding (or persisting) its jobs."""
    self.steals.pop(msg.request_id, None)
    if msg.jobs:
        self._send(msg.sender, HandoffAck(msg.transfer_id, self.peer_id, 0, 0, 1))


def test_checker_catches_a_job_dropped_on_handoff(monkeypatch):
    monkeypatch.setattr(PeerCore, "_on_handoff", _handoff_dropping_jobs)
    report = sim.simulate(_opts(1))
    assert not report.ok
    assert "lost" in report.failure, report.failure
    assert f"--seed {report.seed}" in report.command


def test_checker_catches_a_second_result_overwriting_the_first(monkeypatch):
    original = PeerCore._accept_result

    def accept_every_result(self, result):
        record = self.records.get(result.job_id)
        if record is not None and record.state.final:
            record.state = JobState.RUNNING  # forget that the first result won
            record.executor = result.executor  # ... and who ran it (results are fenced by holder)
        return original(self, result)

    monkeypatch.setattr(PeerCore, "_accept_result", accept_every_result)
    failures = [sim.simulate(_opts(seed, crash_every_s=0.4)) for seed in (1, 2, 3)]
    assert any(not r.ok and "final record" in r.failure for r in failures), [r.failure for r in failures]


def test_checker_catches_a_core_that_runs_deadlines_on_the_wall_clock(monkeypatch):
    """Feed the core its wall clock (stepped by ±minutes) as `now`: timers
    freeze or fire early, and some seed must end in an invariant break."""
    original = PeerCore.handle

    def handle_on_wall_clock(self, event, now, wall=None):
        return original(self, event, wall - sim._WALL_EPOCH_S, wall)

    monkeypatch.setattr(PeerCore, "handle", handle_on_wall_clock)
    failures = [sim.simulate(_opts(seed, clock_step_every_s=0.5, liveness_s=20)) for seed in (1, 2, 3)]
    assert any(not r.ok for r in failures), [r.failure for r in failures]


def test_a_seed_replays_the_same_trace_under_any_string_hash_salt():
    hashes = set()
    for salt in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "sim", "simulate", "--peers", "8", "--jobs", "200", "--seed", "3", "--json"],
            env=dict(os.environ, PYTHONHASHSEED=salt), capture_output=True, text=True, timeout=120, cwd=ROOT)
        report = json.loads(out.stdout)
        assert report["ok"], report["failure"]
        hashes.add(report["trace_hash"])
    assert len(hashes) == 1


def test_cli_prints_json_and_replay_line_on_failure(monkeypatch, capsys):
    args = ["--peers", "4", "--jobs", "40", "--seed", "5", "--duration", "2", "--json"]
    assert sim.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["jobs_final"] == 40 and len(out["trace_hash"]) == 64

    monkeypatch.setattr(PeerCore, "_on_handoff", _handoff_dropping_jobs)
    assert sim.main(["--peers", "6", "--jobs", "300", "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert "seed=1" in err and "replay: python -m sim simulate --peers 6 --jobs 300 --seed 1" in err


# ---------------------------------------------------------------------------
# The job model (--job-model): priorities, retries, delays, dependencies.


def _model_check(report: sim.Report) -> None:
    _check(report)
    m = report.job_model
    assert m is not None
    # Every option was drawn and exercised, not only generated.
    assert m["priority"] and m["wide"] and m["retries"] and m["delay"] and m["at"] and m["dependents"], m
    assert m["arrays"] and m["array_cap_checks"], m
    assert m["retried_tries"] > 0 and m["failed"] > 0 and m["dependency_cancelled"] > 0, m
    assert m["delayed_starts_checked"] > 0 and m["dependent_starts_checked"] > 0, m
    assert m["env"] and m["cwd"] and m["keep"] and m["env_cwd_starts_checked"], m
    assert m["short_keep"] and m["forgotten_checked"], m  # short --keep: forgotten within the run, and checked when
    assert m["periodic_runs"] and m["periodic_cancels"] == m["periodic"] and m["periodic_dues_checked"], m


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_job_model_seeds_pass(seed):
    """Dependencies on the same and on other homes, under every fault."""
    report = sim.simulate(_opts(seed, peers=5 + seed % 4, job_model=True))
    _model_check(report)
    assert report.job_model["other_home_dependencies"] > 0, report.job_model
    assert "--job-model" in report.command


@pytest.mark.parametrize("seed", [1, 2])
def test_job_model_one_home(seed):
    """Every job on one home: its queue ordered by priority, its
    dependencies settled in the batch that finishes them."""
    _model_check(sim.simulate(_opts(seed, submit_to="one", crash_every_s=0.5, job_model=True)))


def test_job_model_is_off_by_default_and_named_in_the_replay():
    """Off by default (no draw, no check: a seed's trace is the one it had
    before the job model); on, the replay line says so."""
    plain = sim.simulate(_opts(4, jobs=100))
    assert plain.job_model is None and "--job-model" not in plain.command
    model = sim.simulate(_opts(4, jobs=100, job_model=True))
    assert model.ok and "--job-model" in model.command and plain.trace_hash != model.trace_hash


def _planted(monkeypatch, target, name, fake, seeds=(1, 2, 3), **kw):
    monkeypatch.setattr(target, name, fake)
    return [sim.simulate(_opts(seed, submit_to="one", crash_every_s=0.5, job_model=True, **kw)) for seed in seeds]


def test_checker_catches_a_queue_that_ignores_priorities(monkeypatch):
    from executor.core.jobqueue import JobQueue

    def lowest_first(self, fits):
        for priority in reversed(self._order):
            for job_id, job in self._by_priority[priority].items():
                if job.spec.slots <= fits:
                    return job_id, job
        return "", None

    reports = _planted(monkeypatch, JobQueue, "head", lowest_first)
    assert any(not r.ok and "stays queued" in r.failure for r in reports), [r.failure for r in reports]


def test_checker_catches_a_dependent_released_at_once(monkeypatch):
    from executor.core.schedule import ScheduleMixin

    def wait_for_nothing(self, record):
        from executor.core.jobs import JobEvent

        record.apply(JobEvent.RELEASE)
        self._enqueue(record)

    reports = _planted(monkeypatch, ScheduleMixin, "_wait_for", wait_for_nothing)
    assert any(not r.ok and "dependency" in r.failure for r in reports), [r.failure for r in reports]


def test_checker_catches_a_delay_not_waited_for(monkeypatch):
    from executor.core.schedule import ScheduleMixin

    original = ScheduleMixin._admit

    def admit_now(self, record, command):
        original(self, record, dataclasses.replace(command, delay_s=None, at=None))

    reports = _planted(monkeypatch, ScheduleMixin, "_admit", admit_now)
    assert any(not r.ok and "due at" in r.failure for r in reports), [r.failure for r in reports]


def test_checker_catches_a_failure_not_retried(monkeypatch):
    from executor.core.schedule import ScheduleMixin

    def fail_at_once(self, record, result, reason):
        from executor.core.jobs import JobEvent

        record.tries = record.spec.tries  # (so that the record itself looks consistent)
        record.apply(JobEvent.FAIL)
        record.attempt, record.executor = result.attempt, result.executor
        record.exit_code, record.reason = result.exit_code, reason
        record.finished_at = self._wall
        self._put_record(record)
        self.remote_open.pop(record.job_id, None)
        self._drop_held(record.job_id)
        self._retire(record.job_id)
        self._wake(record)

    reports = _planted(monkeypatch, ScheduleMixin, "_retry", fail_at_once)
    assert any(not r.ok and "succeed" in r.failure for r in reports), [r.failure for r in reports]


def test_checker_catches_an_array_that_ignores_its_cap(monkeypatch):
    from executor.core.parents import ParentsMixin

    original = ParentsMixin._make_children

    def uncapped(self, parent):
        cap, parent.cap = parent.cap, 0
        try:
            original(self, parent)
        finally:
            parent.cap = cap

    # (An uncapped array shows only when more elements than the cap start at
    # once somewhere: not in every seed; these six include three that do.)
    reports = _planted(monkeypatch, ParentsMixin, "_make_children", uncapped, seeds=range(1, 7))
    assert any(not r.ok and "live elements at once" in r.failure for r in reports), [r.failure for r in reports]


def test_checker_catches_an_environment_lost_on_the_way_to_the_runner(monkeypatch):
    """--env/--cwd: the simulated runner ignores them, so what is checked is
    that a start carries them as submitted; a dispatch that drops them is caught."""
    import executor.core.running as running
    from executor.core.events import StartJob

    def start_without_env(job_id, attempt, spec, timeout, after_sync, started_at):
        return StartJob(job_id, attempt, dataclasses.replace(spec, env=(), cwd=""), timeout, after_sync, started_at)

    reports = _planted(monkeypatch, running, "StartJob", start_without_env, seeds=(1,))
    assert not reports[0].ok and "submitted with env" in reports[0].failure, reports[0].failure


def test_checker_catches_a_short_keep_forgotten_early(monkeypatch):
    """A short --keep (0.5-2 s) is forgotten within the run, no earlier than
    --keep after the record became final on its home's clock."""
    from executor.core.schedule import ScheduleMixin

    original = ScheduleMixin._became_final_id

    def counted_from_long_ago(self, job_id, state, end, keep_s):
        original(self, job_id, state, end - 1.0, keep_s)

    reports = _planted(monkeypatch, ScheduleMixin, "_became_final_id", counted_from_long_ago, seeds=(1,))
    assert not reports[0].ok and "after it became final" in reports[0].failure, reports[0].failure


def test_checker_catches_periodic_runs_sharing_a_due_time(monkeypatch):
    from executor.core.parents import ParentsMixin
    from executor.core.spec import Submit

    original = ParentsMixin._make_children

    def due_kept(self, parent):
        if not parent.periodic or parent.cancelled:
            return original(self, parent)
        if parent.due_at is not None and parent.due_at <= self._wall:
            self._make_child(parent, Submit(parent.spec))  # and its due time left as it was: made again next tick
            self._put_parent(parent)

    reports = _planted(monkeypatch, ParentsMixin, "_make_children", due_kept, seeds=(1,))
    assert not reports[0].ok and "not after the previous run" in reports[0].failure, reports[0].failure


def test_checker_catches_a_periodic_job_running_on_after_its_cancel(monkeypatch):
    from executor.core.parents import ParentsMixin

    original = ParentsMixin._make_children

    def despite_cancel(self, parent):
        cancelled, parent.cancelled = parent.cancelled, False
        try:
            original(self, parent)
        finally:
            parent.cancelled = cancelled

    def tick_all(self):
        for parent in list(self.parents.values()):
            if parent.periodic:
                despite_cancel(self, parent)

    monkeypatch.setattr(ParentsMixin, "_tick_parents", tick_all)
    reports = _planted(monkeypatch, ParentsMixin, "_make_children", despite_cancel, seeds=(1,))
    assert not reports[0].ok and "after the batch of its CANCEL" in reports[0].failure, reports[0].failure
