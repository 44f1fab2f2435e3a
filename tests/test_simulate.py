"""The deterministic simulation (sim/simulate.py): fixed seeds, random seeds,
replay determinism, and proof that its checker can fail.

Every run here is a few hundred jobs on 5-8 peers with crashes, partitions,
link breaks, pauses, slow disks and wall-clock steps; a failure message carries
the seed and the command that replays it.
"""

from __future__ import annotations

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
