"""What each side saw of every cut: when the views on either side saw the
other side suspect and dead, and when alive again after the heal (from the
PEERS samples of the watchers); the run's report built on the chaos
harness's, and its text form.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from sim import checker
from sim.chaos.report import _report as _cluster_report
from sim.chaos.report import findings_lines, verdict_lines

# ---------------------------------------------------------------------------
# Cuts and what each side saw


@dataclass(frozen=True)
class Cut:
    isolated: tuple[str, ...]
    t_cut: float
    t_heal: float | None  # None: never healed (should not happen)


def _first(changes, t_from: float, t_to: float, state: str) -> float | None:
    for t, s, _ in changes:
        if t_from < t < t_to and s == state:
            return t
    return None


def _state_at(changes, t: float) -> str | None:
    state = None
    for tc, s, _ in changes:
        if tc <= t:
            state = s
    return state


def cut_timings(cuts: list[Cut], transitions: dict, peers: list[str]) -> list[dict]:
    """For each cut: how long until the majority saw each isolated peer `dead`
    and the isolated peers saw each majority peer dead (seconds after the
    cut); and after the heal, until each saw the other `alive` again (seconds
    after the heal; 0 if it never stopped being alive). `*_first_s` is the
    first pair, `*_all_s` the last (None if some pair never did before the
    next cut)."""
    out = []
    for k, c in enumerate(cuts):
        horizon = cuts[k + 1].t_cut if k + 1 < len(cuts) else float("inf")
        iso = set(c.isolated)
        rest = [p for p in peers if p not in iso]
        heal = c.t_heal if c.t_heal is not None else horizon
        row: dict = {"isolated": list(c.isolated), "t_cut": round(c.t_cut, 3),
                     "cut_s": None if c.t_heal is None else round(c.t_heal - c.t_cut, 3)}
        for side, pairs in (("majority", [(o, m) for o in rest for m in iso]),
                            ("minority", [(o, m) for o in iso for m in rest])):
            dead, alive = [], []
            for obs, member in pairs:
                changes = transitions.get((obs, member), [])
                t = _first(changes, c.t_cut, horizon, "dead")
                dead.append(None if t is None else t - c.t_cut)
                if c.t_heal is None:
                    alive.append(None)
                elif _state_at(changes, heal) == "alive":
                    alive.append(0.0)
                else:
                    t = _first(changes, heal, horizon, "alive")
                    alive.append(None if t is None else t - heal)
            row[f"{side}_sees_dead_first_s"] = _r(min((x for x in dead if x is not None), default=None))
            row[f"{side}_sees_dead_all_s"] = _r(max(dead) if dead and None not in dead else None)
            row[f"{side}_sees_alive_all_s"] = _r(max(alive) if alive and None not in alive else None)
        # Same side, never cut from each other, yet declared dead (a rumour from across the cut)
        collateral, longest = [], 0.0
        for group in (iso, set(rest)):
            for obs in group:
                for member in group - {obs}:
                    changes = transitions.get((obs, member), [])
                    t = _first(changes, c.t_cut, horizon, "dead")
                    if t is not None:
                        back = _first(changes, t, horizon, "alive")
                        collateral.append(f"{obs}>{member}@{t - c.t_cut:+.2f}s")
                        longest = max(longest, (back if back is not None else horizon) - t)
        row["collateral_dead"] = collateral
        row["collateral_dead_longest_s"] = _r(longest) if collateral else None
        out.append(row)
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)



def _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled, cuts, stats, security,
            net) -> dict:
    base_args = argparse.Namespace(**{**vars(args), "submit_to": "all", "chaos": "partition", "plot": None})
    rep = _cluster_report(base_args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled)
    for key in [k for k in rep if k.startswith(("kill", "restart_", "detect_", "rejoin_"))]:
        del rep[key]
    timings = cut_timings(cuts, dict(rec.transitions), [f"p{i}" for i in range(1, args.peers + 1)])

    def med(key):
        return _r(checker.median([c[key] for c in timings if c[key] is not None]))

    def mx(key):
        vals = [c[key] for c in timings if c[key] is not None]
        return _r(max(vals)) if vals else None

    rep["ok"] = rep["ok"] and settled  # a cluster that does not heal fails the run
    rep.update({
        "cuts": len(cuts),
        "cut_log": timings,
        "majority_sees_dead_median_s": med("majority_sees_dead_all_s"),
        "minority_sees_dead_median_s": med("minority_sees_dead_all_s"),
        "majority_sees_alive_median_s": med("majority_sees_alive_all_s"),
        "majority_sees_alive_max_s": mx("majority_sees_alive_all_s"),
        "minority_sees_alive_median_s": med("minority_sees_alive_all_s"),
        "minority_sees_alive_max_s": mx("minority_sees_alive_all_s"),
        "collateral_dead": sum(len(c["collateral_dead"]) for c in timings),
        "reissued": sum(int(s.get("jobs_reissued", 0)) for s in stats),
        "results_duplicate": sum(int(s.get("jobs_results_duplicate", 0)) for s in stats),
        "peer_reexecuted": sum(int(s.get("jobs_reexecuted", 0)) for s in stats),
        "rate": args.rate, "cut_every": args.cut_every, "cut_for": args.cut_for,
        "security": security, "subnet": str(net.subnet),
    })
    return rep


def _print_report(rep: dict) -> None:
    def f(x, unit=""):
        return "-" if x is None else f"{x}{unit}"

    lines = verdict_lines(rep) + [
        f"re-executed  {rep['reexecuted']} jobs ({rep['extra_attempts']} extra attempts); peers re-issued "
        f"{rep['reissued']}, ignored {rep['results_duplicate']} duplicate/late results",
        f"makespan     {f(rep['makespan_s'], ' s')} vs ideal {f(rep['ideal_s'], ' s')} = "
        f"{f(rep['makespan_over_ideal'], 'x')}; {f(rep['jobs_per_s'])} jobs/s; ack p50 {f(rep['ack_p50_ms'], ' ms')} "
        f"p99 {f(rep['ack_p99_ms'], ' ms')}",
        f"cuts         {rep['cuts']}: majority saw the cut peers dead after median {f(rep['majority_sees_dead_median_s'], ' s')}, "
        f"they saw the majority dead after {f(rep['minority_sees_dead_median_s'], ' s')}",
        f"after heal   alive again: majority's view median {f(rep['majority_sees_alive_median_s'], ' s')} "
        f"max {f(rep['majority_sees_alive_max_s'], ' s')}; cut peers' view median "
        f"{f(rep['minority_sees_alive_median_s'], ' s')} max {f(rep['minority_sees_alive_max_s'], ' s')}",
    ]
    for c in rep["cut_log"]:
        lines.append(f"  cut {','.join(c['isolated'])} at {c['t_cut']}s for {c['cut_s']}s: dead in "
                     f"majority {f(c['majority_sees_dead_all_s'])}, in minority {f(c['minority_sees_dead_all_s'])}; "
                     f"alive after heal: majority {f(c['majority_sees_alive_all_s'])}, minority "
                     f"{f(c['minority_sees_alive_all_s'])}"
                     + (f"; same-side peers declared dead: {' '.join(c['collateral_dead'])} (longest "
                        f"{c['collateral_dead_longest_s']}s)" if c["collateral_dead"] else ""))
    lines += findings_lines(rep)
    print("\n".join(lines), file=sys.stderr, flush=True)


