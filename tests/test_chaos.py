"""The chaos harness: the Jepsen-style checker on hand-made histories, and one
short real run of peers under kill -9 / restart (sim/cluster.py)."""

from __future__ import annotations

import json
import os

from sim import checker
from tests.conftest import processes_under
from sim.checker import ACKED, REJECTED, UNKNOWN, Kill, Observed, Submission


def _done(job_id: str, tag: int | None = None, attempt: int = 1) -> Observed:
    return Observed(job_id, "done", attempt, "p1", None if tag is None else f"hi\n{tag}\n".encode())


# ---------------------------------------------------------------------------
# The checker on hand-made data


def test_clean_run_is_clean():
    subs = [Submission(0, "p1", ACKED, "p1-1"), Submission(1, "p2", ACKED, "p2-1"), Submission(2, "p1", REJECTED)]
    observed = {"p1-1": _done("p1-1", 0), "p2-1": _done("p2-1", 1, attempt=2)}
    v = checker.check(subs, observed, {"p1": ["p1-1"], "p2": ["p2-1"]}, tagged=True)
    assert v.ok
    s = v.summary()
    assert (s["lost"], s["duplicated"], s["unexpected"], s["mismatched"]) == (0, 0, 0, 0)
    assert s["reexecuted"] == 1 and s["extra_attempts"] == 1
    assert (s["acked"], s["rejected"]) == (2, 1)


def test_lost_job_not_found_or_not_done():
    subs = [Submission(0, "p1", ACKED, "p1-1"), Submission(1, "p1", ACKED, "p1-2"), Submission(2, "p1", ACKED, "p1-3")]
    observed = {"p1-1": _done("p1-1", 0), "p1-2": Observed("p1-2", "queued")}  # p1-3 missing at its home
    v = checker.check(subs, observed, tagged=True)
    assert v.lost == ["p1-2", "p1-3"]
    assert v.lost_states == {"queued": 1, "missing": 1}
    assert not v.ok and not v.duplicated and not v.unexpected_count


def test_duplicates_are_caught_three_ways():
    # one id promised twice (e.g. a sequence number reused after a crash)
    subs = [Submission(0, "p1", ACKED, "p1-1"), Submission(1, "p1", ACKED, "p1-1")]
    v = checker.check(subs, {"p1-1": _done("p1-1", 0)}, tagged=True)
    assert v.duplicated == ["p1-1"]
    # an id listed twice
    subs = [Submission(0, "p1", ACKED, "p1-1")]
    v = checker.check(subs, {"p1-1": _done("p1-1")}, {"p1": ["p1-1", "p1-1"]}, tagged=False)
    assert v.duplicated == ["p1-1"]
    # one acknowledged job visible under a second id (its output names it)
    subs = [Submission(0, "p1", ACKED, "p1-1")]
    v = checker.check(subs, {"p1-1": _done("p1-1", 0), "p1-2": _done("p1-2", 0)}, tagged=True)
    assert v.duplicated == ["p1-1", "p1-2"]
    assert not v.ok


def test_mismatched_output():
    subs = [Submission(0, "p1", ACKED, "p1-1"), Submission(1, "p1", ACKED, "p1-2")]
    v = checker.check(subs, {"p1-1": _done("p1-1", 1), "p1-2": _done("p1-2", 1)}, tagged=True)
    assert v.mismatched == ["p1-1"]
    assert "p1-1" in v.duplicated  # and submission 1's output is visible twice
    assert not v.ok


def test_unexpected_versus_recovered_tagged():
    subs = [Submission(0, "p1", ACKED, "p1-1"), Submission(1, "p1", UNKNOWN)]
    observed = {"p1-1": _done("p1-1", 0), "p1-2": _done("p1-2", 1), "p1-3": _done("p1-3", 99)}
    v = checker.check(subs, observed, tagged=True)
    assert v.recovered == 1  # tag 1 was sent, its reply lost: may exist
    assert v.unexpected == ["p1-3"] and v.unexpected_count == 1  # tag 99 was never sent
    assert not v.ok


def test_unexpected_versus_recovered_untagged():
    subs = [Submission(0, "p1", ACKED, "p1-1"), Submission(1, "p1", UNKNOWN), Submission(2, "p2", UNKNOWN)]
    observed = {j: _done(j) for j in ("p1-1", "p1-2", "p2-1")}
    v = checker.check(subs, observed, tagged=False)
    assert v.ok and v.recovered == 2
    observed["p1-3"] = _done("p1-3")  # one more at p1 than p1 has unknowns for
    v = checker.check(subs, observed, tagged=False)
    assert v.unexpected_count == 1 and not v.ok
    v = checker.check(subs, {"p1-1": _done("p1-1")}, {"p1": ["p1-1", "p1-9"]}, tagged=False)
    assert v.unexpected == ["p1-9"]  # listed, but its home does not know it


def test_kill_timings_and_imbalance():
    trans = {
        ("p2", "p1"): [(0.0, "alive", 1), (1.2, "suspect", 1), (2.0, "dead", 1), (2.5, "alive", 2)],
        ("p3", "p1"): [(0.0, "alive", 1), (1.9, "dead", 1), (2.7, "alive", 2)],
    }
    [k] = checker.kill_timings([Kill("p1", 1.0, 1.4)], trans, ["p1", "p2", "p3"])
    assert (k["detect_first_s"], k["detect_all_s"], k["rejoin_all_s"], k["restart_s"]) == (0.9, 1.0, 1.7, 0.4)
    assert k["suspect_first_s"] == 0.2
    # restarted before anyone declared it dead
    trans = {("p2", "p1"): [(0.0, "alive", 1), (1.1, "alive", 2)]}
    [k] = checker.kill_timings([Kill("p1", 1.0, 1.05)], trans, ["p1", "p2"])
    assert k["detect_first_s"] is None and k["rejoin_all_s"] == 0.1
    loads = {"p1": [(0.0, 5), (1.0, 1)], "p2": [(0.0, 1), (1.0, 1)]}
    series = checker.imbalance_series(loads, {"p2": [(0.45, 0.75)]}, 0.0, 1.0, step_s=0.1, stale_s=5)
    assert series[0] == (0.0, 4) and series[-1] == (1.0, 0)
    assert all(abs(t - 0.5) > 0.01 for t, _ in series)  # p2 down: fewer than two live peers
    assert checker.percentile([1, 2, 3, 4], 0.5) == 2 and checker.percentile([], 0.5) is None


# ---------------------------------------------------------------------------
# The checker and the job model (issue 15)


def _ran(job_id: str, tag: int, start: float, end: float, state: str = "done", **kw) -> Observed:
    out = f"s={start:.3f}\ne={end:.3f}\n{tag}\n".encode()
    return Observed(job_id, state, kw.pop("attempt", 1), "p1", out, **kw)


def _model_check(observed: dict, options: dict) -> checker.Verdict:
    subs = [Submission(tag, "p1", ACKED, f"p1-{tag + 1}") for tag in options]
    return checker.check(subs, observed, None, tagged=True, options=options)


def test_job_model_a_clean_history():
    """A retry (attempt 2, try 2/3) is not a re-execution; a job whose every
    try fails ends failed, its afterok dependent cancelled dependency-failed,
    its afterany dependent runs after it; a delayed job starts past its due time."""
    JO = checker.JobOptions
    options = {0: JO(retries=2), 1: JO(fails=True), 2: JO(after=("p1-2",)), 3: JO(after_any=("p1-2",), priority=3),
               4: JO(delay_s=1.0), 5: JO(after=("p1-1",))}
    observed = {
        "p1-1": _ran("p1-1", 0, 10.0, 10.1, attempt=2, tries="2/3"),
        "p1-2": _ran("p1-2", 1, 10.0, 10.2, "failed"),
        "p1-3": Observed("p1-3", "cancelled", reason="dependency-failed"),
        "p1-4": _ran("p1-4", 3, 10.3, 10.4, priority=3),
        "p1-5": _ran("p1-5", 4, 11.5, 11.6, submitted=10.4),
        "p1-6": _ran("p1-6", 5, 10.2, 10.3),
    }
    v = _model_check(observed, options)
    assert v.ok, (v.lost, v.model)
    s = v.summary()
    assert s["reexecuted"] == 0 and s["lost"] == 0 and s["model"] == 0
    assert s["model_counts"] == {"cancelled": 1, "delay_checked": 1, "dependency_order_checked": 2, "done": 4,
                                 "failed": 1, "retried": 1}


def test_job_model_violations_are_caught():
    JO = checker.JobOptions
    options = {0: JO(retries=1), 1: JO(after=("p1-1",)), 2: JO(delay_s=2.0), 3: JO(fails=True),
               4: JO(after=("p1-4",)), 5: JO(priority=5), 6: JO(after=("p1-4",))}
    observed = {
        "p1-1": _ran("p1-1", 0, 10.0, 10.5, tries="1/3"),  # the retries did not survive
        "p1-2": _ran("p1-2", 1, 10.3, 10.4),  # started before its dependency ended
        "p1-3": _ran("p1-3", 2, 11.0, 11.1, submitted=10.0),  # started 1 s before its due time
        "p1-4": _ran("p1-4", 3, 10.0, 10.1, "failed"),
        "p1-5": _ran("p1-5", 4, 10.2, 10.3),  # ran, though its afterok dependency failed
        "p1-6": _ran("p1-6", 5, 10.0, 10.1),  # its priority did not survive
        "p1-7": Observed("p1-7", "cancelled", reason="cancelled"),  # the wrong reason
    }
    v = _model_check(observed, options)
    assert not v.ok
    assert v.lost == ["p1-5 done (expected cancelled)"], v.lost
    joined = " | ".join(v.model)
    for part in ("p1-1 shows try=1/3", "p1-2 started at 10.300, before its dependency p1-1 ended",
                 "p1-3 started at 11.000, before its due time 12.000", "p1-6 shows priority 0",
                 "p1-7 cancelled reason=cancelled"):
        assert part in joined, joined
    assert len(v.model) == 5, v.model


def test_job_model_env_is_checked_in_the_output(tmp_path):
    """`--env PJ_TAG=<v>`: the job prints `env=$PJ_TAG`; the checker compares
    it with what was submitted (a lost or another job's variable shows)."""
    JO = checker.JobOptions

    def ran(job_id, tag, env):
        out = f"env={env}\ns=10.0\ne=10.1\n{tag}\n".encode()
        return Observed(job_id, "done", 1, "p1", out)

    options = {0: JO(env="v0-1"), 1: JO(env="v1-2"), 2: JO(env="v2-3")}
    observed = {"p1-1": ran("p1-1", 0, "v0-1"), "p1-2": ran("p1-2", 1, ""), "p1-3": ran("p1-3", 2, "v0-1")}
    v = _model_check(observed, options)
    assert v.summary()["model_counts"]["env_checked"] == 3
    assert len(v.model) == 2 and "p1-2 printed env=b''" in v.model[0] and "p1-3 printed env=b'v0-1'" in v.model[1], v.model
    from sim.chaos.jobmodel import ChaosJobModel

    model = ChaosJobModel(9, str(tmp_path / "markers"))
    lines = [model.line(tag) for tag in range(40)]
    with_env = [tag for tag in range(40) if model.options[tag].env is not None]
    assert with_env, lines
    for tag in with_env:
        assert f"--env PJ_TAG={model.options[tag].env} " in lines[tag] and "echo env=$PJ_TAG;" in lines[tag]


def test_job_model_arrays_are_judged_by_element():
    """An acknowledged array's elements `<id>.<i>` each print the array's
    tag: judged once each (not as duplicates of one another), every one done,
    and with `%M` no more than M ran at once (their printed times)."""
    JO = checker.JobOptions
    options = {0: JO(array=(0, 2, 2)), 1: JO(array=(0, 1, 0)), 2: JO(array=(0, 2, 2))}
    observed = {
        "p1-1": Observed("p1-1", "done"), "p1-2": Observed("p1-2", "done"), "p1-3": Observed("p1-3", "done"),
        "p1-1.0": _ran("p1-1.0", 0, 10.0, 10.5), "p1-1.1": _ran("p1-1.1", 0, 10.1, 10.6),
        "p1-1.2": _ran("p1-1.2", 0, 10.5, 10.7),  # starts as p1-1.0 ends: two at once, within its cap
        "p1-2.0": _ran("p1-2.0", 1, 10.0, 10.5), "p1-2.1": _ran("p1-2.1", 1, 10.0, 10.5),
        "p1-3.0": _ran("p1-3.0", 2, 10.0, 10.5), "p1-3.1": _ran("p1-3.1", 2, 10.1, 10.5),
        "p1-3.2": _ran("p1-3.2", 2, 10.2, 10.5),
    }
    listed = {"p1": list(observed)}
    subs = [Submission(tag, "p1", ACKED, f"p1-{tag + 1}") for tag in options]
    v = checker.check(subs, observed, listed, tagged=True, options=options)
    assert not v.duplicated and not v.unexpected and not v.lost and not v.mismatched, v.summary()
    assert v.model == ["array p1-3 (%2) ran 3 elements at once (their printed start and end times)"], v.model
    assert v.model_counts == {"array_cap_checked": 2, "array_elements": 8}, v.model_counts
    del observed["p1-2.1"]
    observed["p1-1.1"] = _ran("p1-1.1", 1, 10.1, 10.6)  # another array's tag
    v = checker.check(subs, observed, listed, tagged=True, options=options)
    assert v.lost == ["p1-2.1 missing (an element of array p1-2)"], v.lost
    assert any("p1-1.1 printed tag 1" in m for m in v.model), v.model


# ---------------------------------------------------------------------------
# A short real run


def _children() -> list[int]:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                out.append(int(entry))
    return out


def test_short_chaos_run_loses_nothing(tmp_path, capsys):
    from sim.cluster import main

    before = set(_children())
    workdir = str(tmp_path / "run")
    status = main(["--peers", "3", "--slots", "1", "--jobs", "300", "--job", "20", "--submit-to", "all",
                   "--chaos", "kill-restart", "--kill-every", "1.5", "--min-kills", "1", "--seed", "7",
                   "--clients", "4", "--in-flight", "8", "--timeout", "60", "--workdir", workdir, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["lost"] == report["duplicated"] == report["unexpected"] == report["mismatched"] == 0, report
    assert report["kills"] >= 1
    assert report["acked"] + report["unknown"] + report["rejected"] >= 300
    assert not report["timed_out"]
    assert status == 0
    assert processes_under(workdir) == []
    assert set(_children()) <= before


def test_job_model_under_kill_restart(tmp_path, capsys):
    """Priorities, retries (the first try fails), failing jobs, delays and
    dependencies across homes, under kill -9: every job ends as its options
    say (done, failed, or cancelled dependency-failed), dependents after their
    dependencies, delayed jobs after their due time; 0 lost / 0 duplicated."""
    from sim.cluster import main

    workdir = str(tmp_path / "run")
    status = main(["--peers", "3", "--jobs", "150", "--job-model", "--chaos", "kill-restart", "--kill-every", "1",
                   "--min-kills", "2", "--seed", "3", "--clients", "4", "--in-flight", "4", "--timeout", "60",
                   "--workdir", workdir, "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["lost"] == report["duplicated"] == report["unexpected"] == report["mismatched"] == 0, report
    assert report["model"] == 0, report["examples"]["model"]
    assert status == 0 and report["kills"] >= 2 and not report["timed_out"], report
    drawn, checked = report["job_model"]["drawn"], report["job_model"]["checked"]
    assert min(drawn.values()) > 0, drawn
    assert checked["retried"] > 0 and checked["failed"] > 0 and checked["delay_checked"] > 0, checked
    assert checked["dependency_order_checked"] > 0 and checked["env_checked"] > 0, checked
    assert processes_under(workdir) == []


def test_shell_jobs_and_one_entry_peer(tmp_path, capsys):
    """Shell jobs carry their tag in their output; every result is its own."""
    from sim.cluster import main

    workdir = str(tmp_path / "run")
    status = main(["--peers", "2", "--jobs", "60", "--job", "true", "--submit-to", "one", "--clients", "3",
                   "--timeout", "60", "--workdir", workdir, "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 0, report
    assert report["acked"] == 60 and report["lost"] == report["mismatched"] == report["duplicated"] == 0
    assert processes_under(workdir) == []


# ---------------------------------------------------------------------------
# The gray-failure nemeses (issue 11: pause, slow disk, wall-clock steps)


def _need(mode: str, clock_tool: str = "shim") -> None:
    """Skip with the reason when the machine lacks what `mode` needs; in CI
    (env CI set) that is a failure instead: the nemesis must run there."""
    import pytest

    from sim import nemesis

    why = nemesis.missing(mode, clock_tool)
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {why}")
        pytest.skip(why)


def _nemesis_run(tmp_path, capsys, args: list[str]) -> tuple[int, dict]:
    from sim.cluster import main

    workdir = str(tmp_path / "run")
    status = main(args + ["--seed", "1", "--timeout", "60", "--workdir", workdir, "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert processes_under(workdir) == [], "a peer (or a job) outlived the run"
    return status, report


def _zero(report: dict) -> None:
    assert report["lost"] == report["duplicated"] == report["unexpected"] == report["mismatched"] == 0, report
    assert not report["timed_out"] and not report["peers_exited"] and not report["peers_unasked"], report


def test_pause_nemesis_loses_nothing(tmp_path, capsys):
    """SIGSTOPped peers (1-2 s) while submissions flow: 0 lost / 0 duplicated /
    0 unexpected, and every stopped peer was continued and stopped at the end."""
    status, report = _nemesis_run(tmp_path, capsys, [
        "--peers", "3", "--slots", "1", "--jobs", "60", "--job", "true", "--chaos", "pause", "--pause-every", "0.7",
        "--pause-s", "1.5", "--duration", "2.5", "--min-faults", "1", "--clients", "3", "--in-flight", "4"])
    _zero(report)
    assert report["pauses"] >= 1
    assert status == 0, report


def test_slow_disk_nemesis_loses_nothing_and_keeps_the_peer_alive(tmp_path, capsys):
    """A peer whose every fsync sleeps 300 ms (sim/slowsync.c) while submits
    flow: nothing lost, the shim really is in the peer, and (issue 11 case 13)
    the others never suspect it and its incarnation stays <= 2."""
    _need("slow-disk")
    status, report = _nemesis_run(tmp_path, capsys, [
        "--peers", "2", "--jobs", "40", "--chaos", "slow-disk", "--slow-sync-ms", "300", "--duration", "3",
        "--clients", "2", "--in-flight", "4"])
    _zero(report)
    assert list(report["shims_loaded"].values()) == [True], report["shims_loaded"]
    [slow] = report["slow_disk"].values()
    assert slow["suspicions"] == 0 and slow["declared_dead"] == 0, slow
    assert 1 <= slow["incarnation_max"] <= 2, slow
    assert status == 0, report


def test_clock_step_nemesis_with_kills_loses_nothing_and_keeps_waits(tmp_path, capsys):
    """Wall-clock steps of ±600 s on random peers, kill -9s in between (issue 11
    case 14): every job finishes, and a WAIT pending across a step is answered
    when its job is done, never `ERR timeout` early."""
    _need("clock-step")
    status, report = _nemesis_run(tmp_path, capsys, [
        "--peers", "3", "--slots", "1", "--jobs", "60", "--chaos", "clock-step", "--step-every", "0.6",
        "--kill-every", "1.5", "--min-kills", "1", "--min-faults", "3", "--duration", "2.5", "--wait-probe", "10",
        "--clients", "3", "--in-flight", "4"])
    _zero(report)
    assert report["clock_steps"] >= 2 and report["kills"] >= 1, report
    assert all(report["shims_loaded"].values()), report["shims_loaded"]
    assert report["targets"]["wait_probes_failed"]["value"] == 0, report["wait_probes"]
    assert any(p["ok"] for p in report["wait_probes"]), report["wait_probes"]  # at least one conclusive probe
    assert status == 0, report


def _wall_and_mono(env: dict, offset_file: str, offset: str) -> tuple[float, float, float, float]:
    """(wall under the tool − real wall, monotonic under the tool − real
    monotonic) right after writing `offset`, from a child process."""
    import subprocess
    import sys
    import time

    with open(offset_file, "w") as f:
        f.write(offset + "\n")
    code = "import time; print(time.time(), time.monotonic())"
    before_w, before_m = time.time(), time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    return float(out[0]) - before_w, float(out[1]) - before_m, time.time() - before_w, time.monotonic() - before_m


def test_clock_tools_step_the_wall_clock_and_not_the_monotonic_one(tmp_path):
    """Both ways of stepping a peer's clock move time.time() by the offset and
    leave time.monotonic() alone (the shim always; libfaketime when installed)."""
    import pytest

    from sim import nemesis

    _need("clock-step")
    tools = [("shim", nemesis.build_wallclock(str(tmp_path)))]
    if nemesis.libfaketime() is not None:
        tools.append(("libfaketime", nemesis.libfaketime()))
    elif os.environ.get("CI"):
        pytest.fail("CI is set and libfaketime is missing: apt-get install -y libfaketime")
    for tool, library in tools:
        clock = nemesis.WallClock(str(tmp_path), f"peer-{tool}")
        for offset in (600, -600):
            wall, mono, wall_elapsed, mono_elapsed = _wall_and_mono(clock.env(library, tool), clock.path,
                                                                    f"{offset:+d}")
            assert offset - 1 <= wall <= offset + wall_elapsed + 1, (tool, offset, wall)
            assert -1 <= mono <= mono_elapsed + 1, (tool, offset, mono)


def test_slow_disk_report_counts_suspicions_and_incarnations():
    """The slow-disk figures come from the others' PEERS views and the slow
    peer's STATS: a run where it was suspected and refuted misses both targets."""
    import argparse

    from sim.cluster import Record, _nemesis_report

    rec = Record(0.0)
    rec.transitions[("p1", "p2")] = [(0.1, "alive", 1), (2.0, "suspect", 1), (2.2, "alive", 2), (3.0, "suspect", 2),
                                     (3.5, "dead", 2), (4.0, "alive", 3)]
    rec.transitions[("p2", "p1")] = [(0.1, "alive", 1)]
    rec.stats = {"p2": {"incarnation": "3", "gossip_refutations": "2"}, "p1": {"gossip_probes_failed": "4"}}
    args = argparse.Namespace(slow_sync_ms=300, kill_every=None, peers=2)
    out = _nemesis_report(args, rec, ["p2"])
    assert out["slow_disk"]["p2"] == {"sync_ms": 300, "suspicions": 2, "declared_dead": 1, "incarnation_max": 3,
                                      "refutations": 2, "pauses_detected": 0, "others_probes_failed": 4}
    assert not out["targets"]["slow_peer_suspicions"]["met"] and not out["targets"]["slow_peer_incarnation_max"]["met"]
    rec.transitions[("p1", "p2")] = [(0.1, "alive", 1)]
    rec.stats["p2"] = {"incarnation": "1"}
    out = _nemesis_report(args, rec, ["p2"])
    assert all(t["met"] for t in out["targets"].values()), out["targets"]


def test_wall_offsets_step_within_bounds():
    from sim.nemesis import next_offset

    offset, seen = 0, set()
    for i in range(40):
        offset = next_offset(offset, 600, (i * 0.37) % 1)
        seen.add(offset)
        assert abs(offset) <= 1200
    assert {-600, 600} <= seen


# ---------------------------------------------------------------------------
# The disk nemeses (issue 12: power cut and full disk, on faultfs)


def test_power_cut_nemesis_loses_nothing(tmp_path, capsys):
    """kill -9 plus a power cut of the peer's faultfs (strict POSIX names)
    while submissions flow: 0 lost / 0 duplicated / 0 unexpected, every
    restart came back, and no faultfs or peer outlived the run."""
    _need("power-cut")
    status, report = _nemesis_run(tmp_path, capsys, [
        "--peers", "3", "--slots", "1", "--jobs", "60", "--job", "true", "--chaos", "power-cut", "--kill-every", "0.7",
        "--min-faults", "2", "--duration", "2", "--clients", "3", "--in-flight", "4"])
    _zero(report)
    assert report["power_cuts"] >= 2 and report["kills"] >= 2 and report["fs_names"] == "dir", report
    assert all(k["restart_s"] is not None for k in report["kill_log"]), report["kill_log"]
    assert status == 0, report


def test_power_cut_of_every_peer_at_once_loses_nothing(tmp_path, capsys):
    _need("power-cut")
    status, report = _nemesis_run(tmp_path, capsys, [
        "--peers", "2", "--slots", "1", "--jobs", "40", "--job", "true", "--chaos", "power-cut", "--cut-all",
        "--kill-every", "0.8", "--min-faults", "2", "--duration", "1.5", "--clients", "2", "--in-flight", "4"])
    _zero(report)
    assert report["power_cuts"] >= 1 and all(len(c["peers"]) == 2 for c in report["cut_log"]), report["cut_log"]
    assert status == 0, report


def test_disk_full_nemesis_refuses_submits_and_loses_nothing(tmp_path, capsys):
    """A peer's faultfs runs out of space (below its disk_free_bytes_min) for
    a second or two while submissions flow: SUBMITs to it are refused with
    `ERR disk-full` and sent again elsewhere, no peer exits, and nothing is
    lost, duplicated or unexpected."""
    _need("disk-full")
    status, report = _nemesis_run(tmp_path, capsys, [
        "--peers", "2", "--slots", "1", "--jobs", "40", "--job", "true", "--chaos", "disk-full", "--full-every", "0.3",
        "--full-s", "1.5", "--duration", "2.5", "--rate", "30", "--clients", "2", "--in-flight", "4"])
    _zero(report)
    assert report["disk_fulls"] >= 1, report
    assert sum(report["disk_full_refusals"].values()) >= 1, report["full_log"]
    assert report["rejected"] == 0  # a refusal is a retry, not a rejected submission
    assert status == 0, report
