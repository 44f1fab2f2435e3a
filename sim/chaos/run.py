"""One run of the harness: start the cluster, watch every view, run the
nemeses and the clients in their nurseries, wait for every acknowledged job,
then stop everything and check the history (sim/checker.py).
"""

from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass

import trio

from sim import checker, nemesis
from sim.chaos.collect import _collect, _settle, _states, drain
from sim.chaos.drivers import (
    _chaos,
    _faults,
    _full_chaos,
    _nemesis_env,
    _pause_chaos,
    _shims_loaded,
    _step_chaos,
)
from sim.chaos.jobmodel import ChaosJobModel
from sim.chaos.procs import ProcessCluster, _say
from sim.chaos.report import _nemesis_report, _report
from sim.chaos.workload import Record, Workload, _client, _poll_peers


@dataclass
class Outcome:
    report: dict
    ok: bool


async def run(args, workdir: str) -> Outcome:
    rng = random.Random(args.seed)
    # The nemeses draw from their own stream: kill-restart runs replay as before.
    nem_rng = random.Random(f"nemesis-{args.seed}")
    env, clocks, slow = _nemesis_env(args, workdir, nem_rng)
    names = [f"p{i + 1}" for i in range(args.peers)]
    disks = nemesis.mount_disks(workdir, names, args.fs_names) if args.chaos in nemesis.DISK_MODES else {}
    try:
        return await _run(args, workdir, rng, nem_rng, env, clocks, slow, disks)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(nemesis.unmount_disks, disks)


async def _run(args, workdir: str, rng: random.Random, nem_rng: random.Random, env: dict, clocks: dict,
               slow: list[str], disks: dict) -> Outcome:
    cluster = ProcessCluster(args.peers, args.slots, workdir, args.verbose, env=env,
                             data={name: nemesis.data_dir(d, name) for name, d in disks.items()})
    rec = Record(time.monotonic())
    until = None
    if args.duration > 0:
        def until() -> bool:
            return rec.first_submit is not None and rec.now() < rec.first_submit + args.duration
    model = ChaosJobModel(args.seed, os.path.join(workdir, "markers")) if getattr(args, "job_model", False) else None
    wl = Workload(args.jobs, args.job, until=until, model=model)
    pace = _pacer(wl, args.rate, 20.0 if args.duration > 0 else 0.0)
    t_start = t_end = 0.0
    shims: dict[str, bool] = {}
    try:
        await cluster.start()
        _say(f"{args.peers} peers up in {rec.now():.2f}s: " + " ".join(f"{p.name}={p.addr}" for p in cluster.peers))
        shims = _shims_loaded(cluster)
        for name in [n for n, ok in shims.items() if not ok]:
            rec.errors.append(f"{name}: the LD_PRELOAD shim is not mapped in the peer process: the nemesis did nothing")
        deadline = rec.now() + args.timeout
        timed_out, t_done = False, None
        async with trio.open_nursery() as watchers:
            for p in cluster.peers:
                watchers.start_soon(_poll_peers, p, rec, 0.05)
            await _settle(cluster, rec, 10.0)
            t_start = rec.now()
            with trio.move_on_after(args.timeout) as scope:
                t_done = await _work_under_chaos(cluster, rec, wl, args, rng, nem_rng, clocks, disks, pace,
                                                 t_start, deadline)
            if scope.cancelled_caught or t_done is None:
                timed_out = True
                t_done = None
                _say(f"timeout after {args.timeout:g}s: stopping the workload and checking what there is")
            settled = await _settle(cluster, rec, 15.0)
            if not settled:
                rec.errors.append("the cluster's views did not all show every peer alive within 15 s after the chaos")
            t_end = rec.now()
            for p in cluster.peers:  # the harness restarts what it kills: any other exit is the peer's own
                if not p.running():
                    rec.exited.append(p.name)
                    rec.errors.append(f"{p.name} exited by itself (status {p.proc.returncode}; see {p.log_path})")
            observed, listed = await _collect(cluster, rec, wl)
            watchers.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            cluster.close()
    return _outcome(args, rec, wl, observed, listed, t_start, t_done, t_end, timed_out, settled, slow, shims)


def _outcome(args, rec: Record, wl: Workload, observed: dict, listed: dict, t_start: float, t_done: float | None,
             t_end: float, timed_out: bool, settled: bool, slow: list[str], shims: dict[str, bool]) -> Outcome:
    """The checker's verdict on the history, and the report; a peer that
    exited by itself, a peer not asked, a shim not loaded or a missed target
    fails the run like a lost job."""
    # (Under clock-step each peer, and the jobs it runs, sees its own stepped wall clock.)
    verdict = checker.check(rec.submissions, observed, listed, tagged=wl.tagged,
                            options=wl.model.options if wl.model is not None else None,
                            timing=args.chaos != "clock-step")
    report = _report(args, rec, wl, verdict, observed, t_start, t_done, t_end, timed_out, settled)
    report.update(_nemesis_report(args, rec, slow, wl.disk_full))
    report["peers_exited"], report["peers_unasked"] = sorted(set(rec.exited)), rec.unasked
    report["shims_loaded"] = shims
    report["ok"] = (report["ok"] and not rec.exited and not rec.unasked and all(shims.values())
                    and all(t["met"] for t in report.get("targets", {}).values()))
    return Outcome(report, report["ok"])


async def _work_under_chaos(cluster: ProcessCluster, rec: Record, wl: Workload, args, rng: random.Random,
                            nem_rng: random.Random, clocks: dict, disks: dict, pace, t_start: float,
                            deadline: float) -> float | None:
    """The nemeses and the clients together, until every submission is in and
    every acknowledged job is final (and the nemeses did their minimum); the
    time that was seen, or None at the deadline."""
    kills = args.chaos in ("kill-restart", "power-cut") or args.kill_every is not None
    t_done = None
    async with trio.open_nursery() as probes:
        async with trio.open_nursery() as chaos_nursery:
            if kills:
                chaos_nursery.start_soon(_chaos, cluster, rec, rng, args,
                                         disks if args.chaos == "power-cut" else None)
            if args.chaos == "disk-full":
                chaos_nursery.start_soon(_full_chaos, cluster, rec, nem_rng, args, disks)
            if args.chaos == "pause":
                chaos_nursery.start_soon(_pause_chaos, cluster, rec, nem_rng, args)
            elif args.chaos == "clock-step":
                chaos_nursery.start_soon(_step_chaos, cluster, rec, nem_rng, args, clocks, wl, probes)
            targets = cluster.peers[:1] if args.submit_to == "one" else cluster.peers
            async with trio.open_nursery() as clients:
                for k in range(args.clients):
                    clients.start_soon(functools.partial(_client, k, targets, wl, rec, args.in_flight,
                                                         args.submit_to == "all", pace=pace))
            t_submitted = rec.now()
            _say(f"{sum(1 for s in rec.submissions if s.outcome == checker.ACKED)} submissions "
                 f"acknowledged in {t_submitted - t_start:.2f}s; waiting for them to finish")
            t_done = await drain(lambda ids: _states(cluster, ids), rec, deadline)
            while args.chaos != "none" and rec.now() < deadline and (
                    len(rec.kills) < args.min_kills or _faults(rec) < args.min_faults
                    or (rec.first_submit is not None and rec.now() < rec.first_submit + args.duration)):
                await trio.sleep(0.1)
            chaos_nursery.cancel_scope.cancel()
    # the WAIT probes have ended (each is bounded): their jobs must be final too
    if rec.probes and t_done is not None:
        t_done = await drain(lambda ids: _states(cluster, ids), rec, deadline)
    return t_done


def _pacer(wl: Workload, rate: float, extra_rate: float):
    """An async callable that lets `rate` submissions per second through (0:
    all), and `extra_rate` per second past --jobs while --duration lasts."""
    state = {"next": None}

    async def pace() -> None:
        r = rate if rate > 0 else (extra_rate if wl.extra() else 0.0)
        if r <= 0:
            return
        now = trio.current_time()
        t = now if state["next"] is None else max(state["next"], now)
        state["next"] = t + 1.0 / r
        await trio.sleep(t - now)

    return pace

