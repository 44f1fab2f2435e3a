"""The report of a run: the checker's verdict and the figures as one dict
(the --json output), what the nemeses did and measured against the issue's
targets, its text form (shared with sim/netns.py), and the optional plot.
"""

from __future__ import annotations

import sys

from sim import checker
from sim.chaos.procs import _say
from sim.chaos.workload import Record, Workload


def _nemesis_report(args, rec: Record, slow: list[str], wl_refusals: dict | None = None) -> dict:
    """What the pause / slow-disk / clock-step nemeses did and measured, and
    the issue's targets where a number decides them (`targets`: value,
    target, met; a missed target fails the run like a lost job)."""
    out: dict = {}
    targets: dict[str, dict] = {}
    if rec.pauses:
        lengths = [b - a for _, a, b in rec.pauses]
        out["pauses"] = len(rec.pauses)
        # The same membership timings as a kill: suspected / declared dead while
        # stopped, and alive again (at the incarnation it refutes with) in every view.
        timings = checker.kill_timings([checker.Kill(p, a, b) for p, a, b in rec.pauses], dict(rec.transitions),
                                       [f"p{i + 1}" for i in range(args.peers)])
        out["pause_log"] = [{"peer": p, "t": round(a, 3), "s": round(b - a, 3),
                             **{k: t[k] for k in ("suspect_first_s", "detect_first_s")},  # (from the SIGSTOP)
                             "killed": any(k.peer == p and a <= k.t_kill <= b for k in rec.kills),
                             "alive_after_cont_s": None if t["rejoin_all_s"] is None else
                             round(t["rejoin_all_s"] - (b - a), 3)}
                            for (p, a, b), t in zip(rec.pauses, timings)]
        for entry in out["pause_log"]:  # killed while stopped: its new life answers, not the stopped one
            if entry["killed"]:
                entry["alive_after_cont_s"] = None
        out["pause_max_s"] = round(max(lengths), 3)
        out["pauses_declared_dead"] = sum(1 for t in timings if t["detect_first_s"] is not None)
    chaos = getattr(args, "chaos", None)
    if chaos == "power-cut":
        out["power_cuts"] = len(rec.cuts)
        out["fs_names"] = args.fs_names
        out["cut_log"] = rec.cuts
    if chaos == "disk-full":
        out["disk_fulls"] = len(rec.fulls)
        out["full_log"] = [{"peer": p, "t": round(a, 3), "s": round(b - a, 3)} for p, a, b in rec.fulls]
        out["disk_full_refusals"] = dict(sorted((wl_refusals or {}).items()))
    if rec.steps:
        out["clock_steps"] = len(rec.steps)
        out["step_log"] = [{"peer": p, "t": round(t, 3), "offset_s": o} for p, t, o in rec.steps]
    if rec.probes:
        out["wait_probes"] = rec.probes
        bad = [p for p in rec.probes if p["ok"] is False]
        out["wait_probes_inconclusive"] = sum(1 for p in rec.probes if p["ok"] is None)
        targets["wait_probes_failed"] = {"value": len(bad), "target": 0, "met": not bad}
    if slow and args.kill_every is None:  # (a kill bumps the incarnation: the targets would mean nothing)
        per = {}
        for name in slow:
            views = [(o, m) for (o, m) in rec.transitions if m == name and o != name]
            suspect = sum(1 for key in views for _, st, _ in rec.transitions[key] if st == "suspect")
            dead = sum(1 for key in views for _, st, _ in rec.transitions[key] if st == "dead")
            incs = [inc for key in views for _, _, inc in rec.transitions[key]]
            stats = rec.stats.get(name, {})
            own = int(stats["incarnation"]) if stats.get("incarnation", "").isdigit() else -1
            others = [rec.stats.get(o, {}) for o in rec.stats if o != name]
            per[name] = {
                "sync_ms": args.slow_sync_ms,
                "suspicions": suspect,  # transitions to suspect in the others' views (PEERS every 50 ms)
                "declared_dead": dead,
                "incarnation_max": max(incs + [own]),
                "refutations": int(stats.get("gossip_refutations", 0) or 0),
                "pauses_detected": int(stats.get("gossip_pauses_detected", 0) or 0),
                "others_probes_failed": sum(int(s.get("gossip_probes_failed", 0) or 0) for s in others),
            }
        out["slow_disk"] = per
        suspicions = sum(v["suspicions"] + v["declared_dead"] for v in per.values())
        inc_max = max(v["incarnation_max"] for v in per.values())
        targets["slow_peer_suspicions"] = {"value": suspicions, "target": 0, "met": suspicions == 0}
        targets["slow_peer_incarnation_max"] = {"value": inc_max, "target": 2, "met": 0 < inc_max <= 2}
    if targets:
        out["targets"] = targets
    return out


def _report(args, rec: Record, wl: Workload, verdict: checker.Verdict, observed: dict, t_start: float,
            t_done: float | None, t_end: float, timed_out: bool, settled: bool) -> dict:
    summary = verdict.summary()
    first = rec.first_submit if rec.first_submit is not None else t_start
    done_ids = [s.job_id for s in rec.submissions if s.outcome == checker.ACKED
                and observed.get(s.job_id) is not None and observed[s.job_id].state == "done"]
    makespan = (t_done - first) if t_done is not None else None
    if wl.sleep_ms is not None:
        work_s = len(done_ids) * wl.sleep_ms / 1000
    else:
        runtimes = [observed[j].runtime_ms for j in done_ids if observed[j].runtime_ms is not None]
        work_s = sum(runtimes) / 1000 if runtimes else None  # measured run time of the final attempts
    ideal = work_s / (args.peers * args.slots) if work_s is not None else None
    series = checker.imbalance_series(dict(rec.loads), dict(rec.down), first, t_done if t_done is not None else t_end)
    values = [v for _, v in series]
    timings = checker.kill_timings(rec.kills, dict(rec.transitions), [f"p{i + 1}" for i in range(args.peers)])
    detect = [k["detect_all_s"] for k in timings if k["detect_all_s"] is not None]
    detect_first = [k["detect_first_s"] for k in timings if k["detect_first_s"] is not None]
    rejoin = [k["rejoin_all_s"] for k in timings if k["rejoin_all_s"] is not None]
    restart = [k["restart_s"] for k in timings if k["restart_s"] is not None]

    def r(x, nd=3):
        return None if x is None else round(x, nd)

    report = {
        **{k: summary[k] for k in ("lost", "duplicated", "unexpected", "mismatched", "reexecuted", "extra_attempts",
                                   "acked", "unknown", "recovered", "rejected")},
        "ok": verdict.ok and not timed_out,
        "timed_out": timed_out,
        "settled": settled,
        "peers": args.peers, "slots": args.slots, "jobs": args.jobs, "job": args.job, "seed": args.seed,
        "submit_to": args.submit_to, "chaos": args.chaos, "clients": args.clients,
        "busy_retries": wl.busy,
        "submit_s": r(rec.last_ack - first if rec.last_ack is not None else None, 2),
        "acks_per_s": r(len(rec.latencies) / (rec.last_ack - first) if rec.last_ack and rec.last_ack > first else None, 1),
        "ack_p50_ms": r((checker.percentile(rec.latencies, 0.5) or 0) * 1000),
        "ack_p99_ms": r((checker.percentile(rec.latencies, 0.99) or 0) * 1000),
        "makespan_s": r(makespan, 2),
        "jobs_per_s": r(len(done_ids) / makespan if makespan else None, 1),
        "ideal_s": r(ideal, 2),
        "makespan_over_ideal": r(makespan / ideal if makespan and ideal else None, 2),
        "imbalance_mean": r(sum(values) / len(values) if values else None, 2),
        "imbalance_p99": checker.percentile(values, 0.99),
        "imbalance_max": max(values) if values else None,
        "kills": len(rec.kills),
        "restart_median_s": r(checker.median(restart)),
        "detect_median_s": r(checker.median(detect)),
        "detect_max_s": r(max(detect) if detect else None),
        "detect_first_median_s": r(checker.median(detect_first)),
        "kills_never_declared_dead": sum(1 for k in timings if k["detect_first_s"] is None),
        "rejoin_median_s": r(checker.median(rejoin)),
        "rejoin_max_s": r(max(rejoin) if rejoin else None),
        "lost_states": summary["lost_states"],
        "model": summary["model"],
        "examples": summary["examples"],
        **({"job_model": {"drawn": wl.model.summary(), "checked": summary["model_counts"]}}
           if wl.model is not None else {}),
        "kill_log": timings,
        "errors": rec.errors[:20],
    }
    if args.plot:
        report["plot"] = _plot(args.plot, rec, first, t_end)
    return report


def _plot(path: str, rec: Record, t_start: float, t_end: float) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("--plot: matplotlib is not installed (pip install matplotlib); no plot drawn")
        return None
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for name in sorted(rec.loads):
        pts = []
        for t, v in rec.loads[name]:
            if t_start - 1 <= t <= t_end:
                if pts and t - pts[-1][0] > 0.3:
                    pts.append((t, float("nan")))  # no samples: the peer was down; break the line
                pts.append((t, v))
        if pts:
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=name, linewidth=0.9)
    for k in rec.kills:
        ax.axvline(k.t_kill, color="red", linestyle=":", linewidth=0.8)
        ax.text(k.t_kill, ax.get_ylim()[1], f" {k.peer}", color="red", fontsize=7, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("queued + running")
    ax.set_title("load per peer (red: kill -9 + restart)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print_report(rep: dict) -> None:
    def f(x, unit=""):
        return "-" if x is None else f"{x}{unit}"

    lines = verdict_lines(rep) + [
        f"re-executed  {rep['reexecuted']} jobs ({rep['extra_attempts']} extra attempts)",
        f"throughput   {f(rep['jobs_per_s'])} jobs/s end to end; acks {f(rep['acks_per_s'])}/s, "
        f"ack p50 {f(rep['ack_p50_ms'], ' ms')} p99 {f(rep['ack_p99_ms'], ' ms')}",
        f"makespan     {f(rep['makespan_s'], ' s')} vs ideal {f(rep['ideal_s'], ' s')} = {f(rep['makespan_over_ideal'], 'x')}",
        f"imbalance    max-min of queued+running: mean {f(rep['imbalance_mean'])}, p99 {f(rep['imbalance_p99'])}, "
        f"max {f(rep['imbalance_max'])}",
        f"kills        {rep['kills']}: restart median {f(rep['restart_median_s'], ' s')}; dead in every view: median "
        f"{f(rep['detect_median_s'], ' s')} max {f(rep['detect_max_s'], ' s')} (first view median "
        f"{f(rep['detect_first_median_s'], ' s')}; {rep['kills_never_declared_dead']} restarted before any view "
        f"declared them dead)",
        f"rejoin       alive (new incarnation) in every view: median {f(rep['rejoin_median_s'], ' s')} max "
        f"{f(rep['rejoin_max_s'], ' s')}",
    ]
    lines += nemesis_lines(rep)
    lines += findings_lines(rep)
    print("\n".join(lines), file=sys.stderr, flush=True)


def nemesis_lines(rep: dict) -> list[str]:
    """The pauses, clock steps, WAIT probes and slow disks of a run, and the
    issue's targets."""
    lines = []
    if rep.get("pauses"):
        lines.append(f"pauses       {rep['pauses']} SIGSTOPs, longest {rep['pause_max_s']} s; declared dead in some "
                     f"view during {rep['pauses_declared_dead']}; alive again in every view after SIGCONT: "
                     + ", ".join(f"{x['alive_after_cont_s']}" for x in rep["pause_log"]) + " s")
    if rep.get("clock_steps"):
        lines.append(f"clock steps  {rep['clock_steps']}: " + ", ".join(
            f"{s['peer']}→{s['offset_s']:+d}s@{s['t']:.1f}" for s in rep["step_log"][:8]))
    for p in rep.get("wait_probes", []):
        lines.append(f"WAIT probe   {p['peer']} step {p['step_s']:+d}s: {p['answer']} after {p['after_s']} s"
                     + {True: "", False: "  <-- FAILED", None: "  (inconclusive)"}[p["ok"]])
    for name, v in rep.get("slow_disk", {}).items():
        lines.append(f"slow disk    {name} ({v['sync_ms']} ms per fsync): suspected {v['suspicions']}x, declared dead "
                     f"{v['declared_dead']}x, incarnation max {v['incarnation_max']}, refutations "
                     f"{v['refutations']}, pauses detected {v['pauses_detected']}, others' failed probes "
                     f"{v['others_probes_failed']}")
    if "power_cuts" in rep:
        dropped = sum(d.get("dropped_dirty_bytes", 0) for c in rep["cut_log"] for d in c["dropped"].values())
        lines.append(f"power cuts   {rep['power_cuts']} (faultfs names={rep['fs_names']}): "
                     + ", ".join(f"{'+'.join(c['peers'])}@{c['t']:.1f}" for c in rep["cut_log"][:8])
                     + f"; {dropped} unsynced bytes dropped in all")
    if "disk_fulls" in rep:
        lines.append(f"disk full    {rep['disk_fulls']}: " + ", ".join(
            f"{f['peer']}@{f['t']:.1f} for {f['s']}s" for f in rep["full_log"][:8])
            + f"; SUBMITs refused with disk-full: {rep['disk_full_refusals'] or 'none'}; peers that exited: "
            + (", ".join(rep.get("peers_exited", [])) or "none"))
    for name, t in rep.get("targets", {}).items():
        lines.append(f"target       {name} = {t['value']} (target {'<= ' if 'max' in name else ''}{t['target']}): "
                     + ("met" if t["met"] else "MISSED"))
    return lines


def verdict_lines(rep: dict) -> list[str]:
    """The checker's verdict and the submissions, as every harness reports them."""
    return [
        f"verdict      {'OK' if rep['ok'] else 'FAILED'}: lost={rep['lost']} duplicated={rep['duplicated']} "
        f"unexpected={rep['unexpected']} mismatched={rep['mismatched']}"
        + (f" model={rep['model']}" if "job_model" in rep else "") + (" (TIMED OUT)" if rep["timed_out"] else ""),
        f"submissions  acked={rep['acked']} unknown={rep['unknown']} (recovered {rep['recovered']}) "
        f"rejected={rep['rejected']} busy-retries={rep['busy_retries']}",
    ]


def findings_lines(rep: dict) -> list[str]:
    """Examples of whatever broke, and the harness's own errors."""
    lines = []
    if "job_model" in rep:
        jm = rep["job_model"]
        lines.append(f"job model    drawn {jm['drawn']}; final {jm['checked']}; violations {rep['model']}")
    if rep.get("model"):
        lines.append(f"model        e.g. {rep['examples']['model']}")
    if rep["lost"]:
        lines.append(f"lost         states {rep['lost_states']}; e.g. {rep['examples']['lost']}")
    for key in ("duplicated", "unexpected", "mismatched"):
        if rep[key]:
            lines.append(f"{key:12s} e.g. {rep['examples'][key]}")
    lines += [f"error        {e}" for e in rep["errors"]]
    return lines

