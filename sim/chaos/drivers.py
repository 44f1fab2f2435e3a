"""The nemeses as they run against real peers: kill -9 and restart (with a
power cut of the peer's faultfs under --chaos power-cut), a full disk, SIGSTOP
pauses, wall-clock steps with the WAIT probes that check a pending WAIT keeps
its time; and the environment each peer starts with for them (sim/nemesis.py
holds the tools).
"""

from __future__ import annotations

import os
import random
import time

import trio

from sim import checker, nemesis
from sim.chaos.procs import _CONN_ERRORS, PeerProc, ProcessCluster, _open, _say
from sim.chaos.workload import Record, Workload


async def _chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args, disks: dict | None = None) -> None:
    """Every gap, kill -9 a random peer and restart it. With `disks` (the
    power-cut mode), its faultfs loses power at the same moment: the peer is
    killed first (so that nothing more is written), then the disk drops every
    write not made durable, then the peer restarts on what the disk kept;
    with --cut-all every peer loses power at once."""
    while True:
        await trio.sleep(args.kill_every * rng.uniform(0.75, 1.25))
        victims = list(cluster.peers) if disks and args.cut_all else [rng.choice(cluster.peers)]
        with trio.CancelScope(shield=True):  # never leave a peer down half-way
            for victim in victims:  # a peer that stopped by itself must not hide behind the kill
                if victim.proc is not None and not victim.running():
                    rec.errors.append(f"{victim.name} exited by itself (status {victim.proc.returncode}; see "
                                      f"{victim.log_path}) before the kill at {rec.now():.2f}s")
                    rec.exited.append(victim.name)
            t_kill = rec.now()
            for victim in victims:
                victim.kill9()
            if disks:
                dropped = {}
                for victim in victims:
                    dropped[victim.name] = await trio.to_thread.run_sync(disks[victim.name].power_cut)
                rec.cuts.append({"peers": [v.name for v in victims], "t": round(t_kill, 3), "dropped": dropped})
            if args.restart_delay > 0:
                await trio.sleep(args.restart_delay)
            for victim in victims:
                victim.spawn()
            for victim in victims:
                ok = await victim.wait_listening(30.0)
                t_up = rec.now() if ok else None
                rec.kills.append(checker.Kill(victim.name, t_kill, t_up))
                rec.down[victim.name].append((t_kill, t_up if t_up is not None else float("inf")))
                _say(f"{'kill -9 + power cut' if disks else 'kill -9'} {victim.name} at {t_kill:.2f}s; "
                     + (f"listening again after {t_up - t_kill:.2f}s" if ok else "did not come back"))
                if not ok:
                    rec.errors.append(f"{victim.name} did not restart after kill (see {victim.log_path})")
                    return


async def _full_chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args, disks: dict) -> None:
    """Every gap, fill a random peer's disk: its faultfs budget becomes what
    is used now plus a reserve below the peer's disk_free_bytes_min (faultfs
    reports the budget's remainder as free space), for --full-s seconds
    (±25 %), then the budget is lifted. The lift is in a `finally`, and the
    run lifts every budget before it checks: no way out leaves a disk full."""
    while True:
        await trio.sleep(args.full_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        length = args.full_s * rng.uniform(0.75, 1.25)
        disk = disks[victim.name]
        used = (await trio.to_thread.run_sync(disk.stats))["used_bytes"]
        t_full = rec.now()
        await trio.to_thread.run_sync(disk.set_budget_bytes, used + args.full_reserve_bytes)
        try:
            await trio.sleep(length)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(disk.set_budget_bytes, None)
                t_back = rec.now()
                rec.fulls.append((victim.name, t_full, t_back))
                _say(f"disk of {victim.name} full at {t_full:.2f}s ({args.full_reserve_bytes} bytes left), "
                     f"space back after {t_back - t_full:.2f}s")


async def _pause_chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args) -> None:
    """Every gap, SIGSTOP a random peer for --pause-s seconds (±25 %), then
    SIGCONT it. The SIGCONT is in a `finally`, and ProcessCluster.close()
    continues every peer before stopping it: no way out leaves a peer stopped."""
    while True:
        await trio.sleep(args.pause_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        length = args.pause_s * rng.uniform(0.75, 1.25)
        t_stop = rec.now()
        if not victim.pause():
            continue
        try:
            await trio.sleep(length)
        finally:
            victim.resume()
            t_cont = rec.now()
            rec.pauses.append((victim.name, t_stop, t_cont))
            rec.down[victim.name].append((t_stop, t_cont))
            _say(f"SIGSTOP {victim.name} at {t_stop:.2f}s, SIGCONT after {t_cont - t_stop:.2f}s")


_PROBE_TAG0 = 10_000_000  # WAIT probes' submission tags: far above any workload's
_PROBE_JOB_MS = 1500  # the probe job runs this long, so that its WAIT is pending at the step
_PROBE_ARM_S = 0.3  # between sending the WAIT and stepping the clock: the peer has read it


async def _wait_probe(peer: PeerProc, rec: Record, wl: Workload, tag: int, step_s: int, armed: trio.Event,
                      wait_s: float) -> None:
    """Issue 11 case 14: submit a job of 3 s to the peer whose clock is about
    to step, send `WAIT <id> <wait_s>`, let the step happen (`armed`), and
    record the answer and how long it took on the harness's monotonic clock.
    It fails when the answer is `ERR timeout` before `wait_s` has passed, or
    when no answer comes within `wait_s` + 10 s. The probe job is a recorded
    submission, so the checker accounts for it like any other."""
    # ok: True (answered in time), False (ERR timeout early, or no answer on an
    # open connection), None (inconclusive: the connection broke, e.g. a kill)
    probe = {"peer": peer.name, "step_s": step_s, "t": round(rec.now(), 3), "job": None, "answer": None,
             "after_s": None, "ok": None}
    line = f"SUBMIT sleep {_PROBE_JOB_MS / 1000:g}; echo {tag}" if wl.tagged else str(_PROBE_JOB_MS)
    outcome = checker.UNKNOWN
    try:
        client = await _open(peer.addr, timeout_s=2.0)
        try:
            reply = await client.request(line, timeout_s=10.0)
            if not reply.ok:
                outcome = checker.REJECTED
                probe["answer"] = f"submit ERR {reply.code}"
                return
            outcome, probe["job"] = checker.ACKED, reply.text.strip()
            t0 = time.monotonic()
            await client.send_lines([f"WAIT {probe['job']} {wait_s:g}"])
            await trio.sleep(_PROBE_ARM_S)
            armed.set()
            answer = None
            with trio.move_on_after(wait_s + 10.0):
                answer = await client.read()
            after = time.monotonic() - t0
            probe["after_s"] = round(after, 3)
            if answer is None:
                probe["answer"] = f"no answer within {wait_s + 10:g}s"
                probe["ok"] = False
            elif answer.ok:
                probe["answer"] = " ".join(answer.text.split(" ")[:2])
                probe["ok"] = True
            else:
                probe["answer"] = f"ERR {answer.code}"
                probe["ok"] = answer.code == "timeout" and after >= wait_s - _PROBE_ARM_S
        finally:
            await client.aclose()
    except (*_CONN_ERRORS, trio.TooSlowError, TimeoutError) as exc:
        probe["answer"] = f"connection: {exc!r}"[:200]
    finally:
        armed.set()
        rec.submissions.append(checker.Submission(tag, peer.name, outcome, probe["job"]))
        rec.probes.append(probe)
        _say(f"WAIT probe at {peer.name} across a {step_s:+d}s step: {probe['answer']} after {probe['after_s']}s")


async def _step_chaos(cluster: ProcessCluster, rec: Record, rng: random.Random, args, clocks: dict,
                      wl: Workload, probes: trio.Nursery) -> None:
    """Every gap, step the wall clock of a random peer by ±--step-s seconds
    (its monotonic clock does not move). With --wait-probe, a WAIT is pending
    at that peer when its clock jumps (`_wait_probe`, run in `probes`, which
    outlives this task)."""
    while True:
        await trio.sleep(args.step_every * rng.uniform(0.75, 1.25))
        victim = rng.choice(cluster.peers)
        clock = clocks[victim.name]
        offset = nemesis.next_offset(clock.offset_s, int(args.step_s), rng.random())
        if args.wait_probe and victim.running():
            armed = trio.Event()
            probes.start_soon(_wait_probe, victim, rec, wl, _PROBE_TAG0 + len(rec.steps), offset - clock.offset_s,
                              armed, args.wait_probe)
            with trio.move_on_after(15.0):  # (a paused or restarting peer may be slow to answer the submit)
                await armed.wait()
        clock.set(offset)
        rec.steps.append((victim.name, rec.now(), offset))
        _say(f"wall clock of {victim.name} stepped to {offset:+d}s at {rec.now():.2f}s")


def _shims_loaded(cluster: ProcessCluster) -> dict[str, bool]:
    """For each peer started with an LD_PRELOAD shim: is it mapped in the
    running process (/proc/<pid>/maps)? A nemesis that silently did not load
    would make a run pass for the wrong reason."""
    out = {}
    for p in cluster.peers:
        library = (p.env or {}).get("LD_PRELOAD")
        if library and p.running():
            try:
                with open(f"/proc/{p.proc.pid}/maps") as f:
                    out[p.name] = os.path.realpath(library) in f.read()
            except OSError:
                out[p.name] = False
    return out


def _faults(rec: Record) -> int:
    return len(rec.kills) + len(rec.pauses) + len(rec.steps) + len(rec.fulls)


def _nemesis_env(args, workdir: str, rng: random.Random) -> tuple[dict[str, dict[str, str]], dict, list[str]]:
    """Each peer's extra environment for the chosen mode, its wall clocks
    (clock-step), and the slowed peers (slow-disk). Raises
    nemesis.Unavailable with what to install."""
    names = [f"p{i + 1}" for i in range(args.peers)]
    env: dict[str, dict[str, str]] = {}
    clocks: dict[str, nemesis.WallClock] = {}
    slow: list[str] = []
    if args.chaos == "slow-disk":
        library = nemesis.build_slowsync(workdir)
        slow = sorted(rng.sample(names, min(args.slow_peers, len(names))))
        for name in slow:
            env[name] = nemesis.slowsync_env(library, args.slow_sync_ms)
    elif args.chaos == "disk-full":
        for name in names:  # (the peers' own default, 64 MiB, would need a 64 MiB reserve on every fill)
            env[name] = {"PEERJOBS_DISK_FREE_BYTES_MIN": str(args.disk_free_min_bytes)}
    elif args.chaos == "clock-step":
        if args.clock_tool == "shim":
            library = nemesis.build_wallclock(workdir)
        else:
            library = nemesis.libfaketime()
            if library is None:
                raise nemesis.Unavailable(nemesis.missing("clock-step", "libfaketime"))
        for name in names:  # every peer starts at offset 0 under the tool, so that any can be stepped
            clocks[name] = nemesis.WallClock(workdir, name)
            env[name] = clocks[name].env(library, args.clock_tool)
    return env, clocks, slow

