"""Partitions between real peers in network namespaces (sim/netns.py): the
cut timings on hand-made views, and one bounded real run with a cut long
enough for the homes to re-issue what the cut peer held. The real run needs
root and `ip netns`; elsewhere it is skipped with the harness's own reason."""

from __future__ import annotations

import json
import os
import re

import pytest

from sim import netns
from tests.conftest import processes_under
from sim.netns import Cut, cut_timings


def test_cut_timings_both_sides():
    t = {
        # majority (p1, p3) about the cut peer p2
        ("p1", "p2"): [(0.0, "alive", 1), (1.3, "suspect", 1), (2.1, "dead", 1), (7.6, "alive", 2)],
        ("p3", "p2"): [(0.0, "alive", 1), (2.3, "dead", 1), (7.5, "alive", 2)],
        # the cut peer about the majority
        ("p2", "p1"): [(0.0, "alive", 1), (2.0, "dead", 1), (7.4, "alive", 2)],
        ("p2", "p3"): [(0.0, "alive", 1), (2.2, "dead", 1), (7.7, "alive", 2)],
        # a rumour from across the cut: p3 briefly declared dead by p1 at the heal
        ("p1", "p3"): [(0.0, "alive", 1), (6.05, "dead", 1), (6.1, "alive", 2)],
    }
    [c] = cut_timings([Cut(("p2",), 1.0, 6.0)], t, ["p1", "p2", "p3"])
    assert (c["majority_sees_dead_first_s"], c["majority_sees_dead_all_s"]) == (1.1, 1.3)
    assert (c["minority_sees_dead_first_s"], c["minority_sees_dead_all_s"]) == (1.0, 1.2)
    assert (c["majority_sees_alive_all_s"], c["minority_sees_alive_all_s"]) == (1.6, 1.7)
    assert c["cut_s"] == 5.0
    assert c["collateral_dead"] == ["p1>p3@+5.05s"] and c["collateral_dead_longest_s"] == 0.05


def test_cut_too_short_to_be_noticed():
    t = {("p1", "p2"): [(0.0, "alive", 1), (1.5, "suspect", 1), (1.9, "alive", 1)],
         ("p2", "p1"): [(0.0, "alive", 1)]}
    [c] = cut_timings([Cut(("p2",), 1.0, 1.8)], t, ["p1", "p2"])
    assert c["majority_sees_dead_all_s"] is None and c["minority_sees_dead_all_s"] is None
    assert c["majority_sees_alive_all_s"] == 0.1  # suspect at the heal, alive 0.1 s later
    assert c["minority_sees_alive_all_s"] == 0.0  # never stopped being alive


def _ours(pid_names: set[str]) -> list[str]:
    """Namespaces, links and processes of the run that are still there."""
    left = [ns for ns in netns._our_namespaces() if ns in pid_names]
    left += [name for name in netns._our_links() if name in pid_names]
    return left


def test_cut_and_heal_loses_nothing(tmp_path, capsys):
    """3 peers x 2 slots, 240 shell jobs of 0.2 s paced at 60/s (twice what they
    can run: queues build up and are stolen, so the cut peer holds jobs of the
    others), one peer cut off for
    6 s (dead in the others' views after ~1.2 s; its homes re-issue after 3 s more,
    scanned every 0.75 s: well before the heal)."""
    workdir = str(tmp_path / "run")
    status = netns.main(["--peers", "3", "--slots", "2", "--jobs", "240", "--job", "sleep 0.2", "--rate", "60",
                         "--cut-every", "1.5", "--cut-for", "6", "--cut-size", "1", "--min-cuts", "1",
                         "--seed", "5", "--timeout", "60", "--workdir", workdir, "--json"])
    out = capsys.readouterr()
    report = json.loads(out.out.strip().splitlines()[-1])
    if "skipped" in report:
        assert status == 0 and "cannot run here" in out.err
        pytest.skip(f"partition harness: {report['skipped']}")
    pid = os.getpid()
    names = {f"pjbr{pid}"} | {f"pj{pid}-{i}" for i in (1, 2, 3)} | {f"pj{pid}v{i}" for i in (1, 2, 3)}
    assert _ours(names) == [], "namespaces or links of the run left behind"
    assert processes_under(workdir) == []
    assert report["lost"] == report["duplicated"] == report["unexpected"] == report["mismatched"] == 0, report
    assert report["cuts"] >= 1 and report["cut_log"][0]["cut_s"] >= 4.0
    assert report["acked"] + report["unknown"] + report["rejected"] >= 240
    assert not report["timed_out"] and report["settled"], report["errors"]
    assert report["cut_log"][0]["majority_sees_dead_all_s"] is not None, report["cut_log"]
    assert report["reissued"] >= 1 and report["reexecuted"] >= 1, report
    assert status == 0
    assert re.match(r"198\.1[89]\.\d+\.0/24$", report["subnet"])
