"""After the chaos: asking every home for its jobs' states until every
acknowledged job is final, waiting for every view to show every peer alive,
and collecting each job's outcome (state, attempt, executor, output) for the
checker.
"""

from __future__ import annotations

import math
from collections import defaultdict

import trio

from sim import checker
from sim.chaos.procs import _CONN_ERRORS, ProcessCluster, _say, request_many
from sim.chaos.workload import Record, Workload
from sim.checker_jobmodel import array_elements


async def _states(cluster: ProcessCluster, ids: list[str], verb: str = "STATUS", *,
                  timeout_s: float | None = None) -> dict[str, tuple]:
    """`verb` for each id at its home, pipelined per home; ids whose home
    could not be asked are left out. `timeout_s`: a home that does not answer
    within it is skipped (a peer cut off by a partition stalls TCP instead of
    breaking it); None: request_many's own timeout."""
    by_home: dict[str, list[str]] = defaultdict(list)
    for job_id in ids:
        by_home[checker.home_of(job_id)].append(job_id)
    out: dict[str, tuple] = {}

    async def ask(home: str, chunk: list[str]) -> None:
        peer = cluster.by_name.get(home)
        if peer is None:
            return
        lines = [f"{verb} {j}" for j in chunk]
        with trio.move_on_after(math.inf if timeout_s is None else timeout_s):
            try:
                if timeout_s is None:
                    replies = await request_many(peer.addr, lines)
                else:
                    replies = await request_many(peer.addr, lines, timeout_s=timeout_s)
            except (*_CONN_ERRORS, trio.TooSlowError):
                return
            out.update(zip(chunk, replies))

    async with trio.open_nursery() as nursery:
        for home, chunk in by_home.items():
            nursery.start_soon(ask, home, chunk)
    return out


async def _states_retrying(cluster: ProcessCluster, ids: list[str], verb: str, tries: int = 4) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i in range(tries):
        todo = [j for j in ids if j not in out]
        if not todo:
            break
        if i:
            await trio.sleep(0.5)
        out.update(await _states(cluster, todo, verb))
    return out


def _state_of(reply: tuple) -> str | None:
    if reply[0] != "ok":
        return None
    parts = reply[1].split(" ")
    return parts[1] if len(parts) > 1 else None


async def drain(ask_states, rec: Record, deadline: float) -> float | None:
    """Wait until every acknowledged job is final at its home; the time it was
    seen so, or None at the deadline. `ask_states(ids)` returns the STATUS
    replies it could get, by id (homes it could not reach are asked again)."""
    open_ids = {s.job_id for s in rec.submissions if s.outcome == checker.ACKED}
    next_note = rec.now() + 2.0
    replies: dict[str, tuple] = {}
    while open_ids:
        if rec.now() >= next_note:
            next_note = rec.now() + 2.0
            some = sorted(open_ids)[:3]
            _say(f"{rec.now():.1f}s: {len(open_ids)} acknowledged jobs not finished yet, e.g. "
                 + "; ".join(" ".join(replies[j][1:]) if j in replies else f"{j} (no answer)" for j in some))
        if rec.now() > deadline:
            return None
        replies = await ask_states(sorted(open_ids))
        for job_id, reply in replies.items():
            if _state_of(reply) in ("done", "failed", "cancelled") or reply[:2] == ("err", "not-found"):
                open_ids.discard(job_id)  # (not found at its home: lost, and waiting will not help)
        if open_ids:
            await trio.sleep(0.2)
    return rec.now()


async def _settle(cluster: ProcessCluster, rec: Record, timeout_s: float) -> bool:
    """Wait until every peer's view shows every other peer alive."""
    names = [p.name for p in cluster.peers]
    with trio.move_on_after(timeout_s):
        while True:
            ok = all(rec.transitions.get((o, m)) and rec.transitions[(o, m)][-1][1] == "alive"
                     for o in names for m in names if o != m)
            if ok:
                return True
            await trio.sleep(0.1)
    return False



async def _collect(cluster: ProcessCluster, rec: Record, wl: Workload) -> tuple[dict, dict]:
    """Every job every home has issued (STATUS, then RESULT of the final
    ones), and every peer's LIST."""
    acked_max: dict[str, int] = defaultdict(int)
    for s in rec.submissions:
        if s.job_id:
            acked_max[checker.home_of(s.job_id)] = max(acked_max[checker.home_of(s.job_id)],
                                                       int(s.job_id.rpartition("-")[2]))
    observed: dict[str, checker.Observed] = {}
    listed: dict[str, list[str]] = {}
    elements: dict[str, list[str]] = defaultdict(list)  # (--job-model) home -> elements of its acked arrays
    options = wl.model.options if wl.model is not None else {}
    for s in rec.submissions:
        opts = options.get(s.tag)
        if s.job_id and opts is not None and opts.array is not None:
            elements[checker.home_of(s.job_id)] += array_elements(s.job_id, opts)
    for peer in cluster.peers:
        issued = acked_max[peer.name]
        for _ in range(3):
            try:
                probe = await request_many(peer.addr, ["STATS", "LIST 1000"])
                break
            except (*_CONN_ERRORS, trio.TooSlowError):
                await trio.sleep(0.5)
        else:
            rec.errors.append(f"could not ask {peer.name} at the end")
            rec.unasked.append(peer.name)
            continue
        if probe[0][0] == "ok":
            stats = dict(line.split("=", 1) for line in probe[0][1] if "=" in line)
            rec.stats[peer.name] = stats
            issued = max(issued, int(stats.get("issued", 0)))
        if probe[1][0] == "ok":
            listed[peer.name] = [line.split(" ", 1)[0] for line in probe[1][1]]
        ids = [f"{peer.name}-{k}" for k in range(1, issued + 1)] + elements[peer.name]
        statuses = await _states_retrying(cluster, ids, "STATUS")
        results = await _states_retrying(cluster, [j for j in ids if _state_of(statuses.get(j, ("err",))) in
                                                   ("done", "failed", "cancelled")], "RESULT")
        for job_id in ids:
            status = statuses.get(job_id)
            if status is None:
                rec.errors.append(f"no answer about {job_id}")
                continue
            if status[0] != "ok":
                continue  # not found: absent
            parts = status[1].split(" ")
            fields = dict(x.split("=", 1) for x in parts[2:] if "=" in x)
            state, attempt, output = parts[1], int(fields.get("attempt", "1")), None
            result = results.get(job_id)
            if result is not None and result[0] == "ok":
                rparts = result[1].split(" ")
                rfields = dict(x.split("=", 1) for x in rparts[2:] if "=" in x)
                state, attempt, output = rparts[1], int(rfields.get("attempt", attempt)), result[2]
            runtime = fields.get("runtime_ms")
            priority, submitted = fields.get("priority", "0"), fields.get("submitted")
            observed[job_id] = checker.Observed(
                job_id, state, attempt, fields.get("executor", ""), output,
                int(runtime) if runtime and runtime.isdigit() else None, fields.get("reason"), fields.get("try"),
                int(priority) if priority.lstrip("-").isdigit() else 0,
                float(submitted) if submitted and submitted.replace(".", "", 1).isdigit() else None)
    return observed, listed


