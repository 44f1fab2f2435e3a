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
