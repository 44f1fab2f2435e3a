"""`python -m sim bench speed` runs end to end at tiny sizes (no timing
assertions: figures come from the command itself, on a quiet machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sim.bench_speed import skew_lines

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_speed_command_runs_a_scenario_and_prints_its_figures():
    proc = subprocess.run([sys.executable, "-m", "sim", "bench", "speed", "--scenario", "S2", "--runs", "1",
                           "--scale", "0.05", "--json"], check=False, cwd=_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"S2_p50", "S2_p99"}
    for entry in result.values():
        assert entry["round_trips"] == 10 and len(entry["runs"]) == 1
        assert entry["figure"] > 0 and entry["met"] in (True, False)
    assert "S2_p50" in proc.stdout and "target <= 1" in proc.stdout


def test_speed_rejects_an_unknown_scenario():
    proc = subprocess.run([sys.executable, "-m", "sim", "bench", "speed", "--scenario", "S9"], check=False, cwd=_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_skew_is_seeded_and_its_ideal_is_the_larger_bound():
    lines, ideal = skew_lines()
    assert lines == skew_lines()[0] and sorted(lines) != lines
    assert lines.count("1000") == 4 and lines.count("20") == 60
    assert ideal == max((4 * 1000 + 60 * 20) / 1000 / 3, 1.0)


def test_schedule_bounds_are_the_pair_bound_and_greedy_in_submission_order():
    from sim.bench_speed import schedule_bounds

    # Four 1 s jobs on three machines: two share one, whatever the schedule.
    assert schedule_bounds(["1000"] * 4 + ["20"] * 60) == (2.0, 2.0)
    # Greedy in order puts the late long job after the short ones.
    assert schedule_bounds(["20"] * 3 + ["1000"], machines=3) == (1.0, 1.02)
    lines, ideal = skew_lines()
    bound, greedy = schedule_bounds(lines)
    assert ideal < bound <= greedy
