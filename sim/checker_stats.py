"""The figures of a chaos run, as pure functions over plain data (split
from sim/checker.py, which keeps their names importable): percentiles, the
membership timings of each kill (detection and rejoin, from PEERS
transitions) and the load imbalance over time. Nothing here does I/O, reads
a clock or draws random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Statistics


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: list[float]) -> float | None:
    return percentile(values, 0.5)


# ---------------------------------------------------------------------------
# Membership timings of kills


@dataclass(frozen=True)
class Kill:
    peer: str
    t_kill: float
    t_up: float | None  # when the restarted peer listened again (None: never)


def kill_timings(
    kills: list[Kill],
    transitions: dict[tuple[str, str], list[tuple[float, str, int]]],
    peers: list[str],
) -> list[dict]:
    """For each kill: when each other peer's PEERS view first showed the victim
    `dead` (detection) and `alive` at a newer incarnation (rejoin), in seconds
    after the kill.

    `transitions[(observer, member)]` is the observer's view of the member as a
    list of changes `(t, state, incarnation)`, in time order. Only changes
    before the victim's next kill count. `detect_all_s` / `rejoin_all_s` are
    the time by which every observer that saw it had seen it (None if some
    observer never did: a restart quick enough that the old life was never
    declared dead is common, and is reported as such).
    """
    out = []
    for k in kills:
        later = [o.t_kill for o in kills if o.peer == k.peer and o.t_kill > k.t_kill]
        horizon = min(later) if later else math.inf
        detect, rejoin, suspect = {}, {}, {}
        for obs in peers:
            if obs == k.peer:
                continue
            changes = transitions.get((obs, k.peer), [])
            before = [c for c in changes if c[0] <= k.t_kill]
            old_inc = before[-1][2] if before else -1
            d = s = r = None
            for t, state, inc in changes:
                if t <= k.t_kill or t >= horizon:
                    continue
                if state == "suspect" and s is None and r is None:
                    s = t - k.t_kill
                if state == "dead" and d is None and r is None:
                    d = t - k.t_kill
                if state == "alive" and inc > old_inc and r is None:
                    r = t - k.t_kill
            detect[obs], suspect[obs], rejoin[obs] = d, s, r
        ds = [x for x in detect.values() if x is not None]
        rs = [x for x in rejoin.values() if x is not None]
        out.append({
            "peer": k.peer,
            "t_kill": round(k.t_kill, 3),
            "restart_s": None if k.t_up is None else round(k.t_up - k.t_kill, 3),
            "suspect_first_s": _r(min((x for x in suspect.values() if x is not None), default=None)),
            "detect_first_s": _r(min(ds) if ds else None),
            "detect_all_s": _r(max(ds) if ds and len(ds) == len(detect) else None),
            "rejoin_all_s": _r(max(rs) if rs and len(rs) == len(rejoin) else None),
            "detected_by": len(ds),
            "observers": len(detect),
        })
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ---------------------------------------------------------------------------
# Load imbalance over time


def imbalance_series(
    loads: dict[str, list[tuple[float, int]]],
    down: dict[str, list[tuple[float, float]]],
    t_start: float,
    t_end: float,
    *,
    step_s: float = 0.1,
    stale_s: float = 0.35,
) -> list[tuple[float, int]]:
    """max − min of (queued + running) across live peers on a regular grid.

    `loads[peer]` are (t, load) samples in time order; `down[peer]` the
    intervals it was dead. A peer counts at time t when it is not down and
    has a sample no older than `stale_s`. Grid points with fewer than two
    live peers are skipped.
    """
    idx = {p: 0 for p in loads}
    out = []
    n = max(0, int((t_end - t_start) / step_s) + 1)
    for i in range(n):
        t = t_start + i * step_s
        values = []
        for peer, samples in loads.items():
            j = idx[peer]
            while j + 1 < len(samples) and samples[j + 1][0] <= t:
                j += 1
            idx[peer] = j
            if not samples or samples[j][0] > t or t - samples[j][0] > stale_s:
                continue
            if any(a <= t < b for a, b in down.get(peer, ())):
                continue
            values.append(samples[j][1])
        if len(values) >= 2:
            out.append((t, max(values) - min(values)))
    return out
