"""Jepsen-style checks of a chaos run, as pure functions over plain data.

`sim/cluster.py` records what the clients did (`Submission`s) and, at the end,
what every home peer says it holds (`Observed` records, found by asking each
peer for STATUS/RESULT of every id it has issued, plus its `LIST`). `check`
then classifies every operation the way Jepsen's queue checker does:

* **lost** — a submission was acknowledged (`OK <id>`) but its id is not done at
  its home at the end (not found, still queued/running, failed or cancelled).
* **duplicated** — one job is visible more than once: one id acknowledged for two
  submissions, an id listed twice, or (shell jobs, whose output names their
  submission) one submission's output under two ids.
* **mismatched** — a done job's output belongs to another submission.
* **unexpected** — a job exists that no client ever sent. A submission whose
  connection broke before its reply is *unknown*: its job may or may not exist
  (Jepsen's "recovered" when it does), so only jobs beyond those are unexpected.
* **reexecuted** — an acknowledged job whose final attempt number is > 1
  (beyond its tries, with `--retries`: a retry is a new attempt, not a duplicate).

With the job model (`JobOptions` per tag, `--job-model`), "done" becomes the
state each job must end in — failed for a job whose every try fails,
cancelled `dependency-failed` for one whose afterok dependency did not end
done — and **model** violations are counted too: a dependent that started
before a dependency ended, a delayed job that started before its due time
(both from the start and end times the jobs print, on the one machine's
clock), a priority or a try count that did not survive.

Also here, as pure functions: membership timings of each kill (detection and
rejoin, from PEERS transitions), the load imbalance over time, and percentiles.
Nothing here does I/O, reads a clock or draws random numbers.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

ACKED, UNKNOWN, REJECTED = "acked", "unknown", "rejected"
EXAMPLES_MAX = 10


@dataclass(frozen=True)
class Submission:
    """One submission a client sent. `tag` names the job (the n of its
    `; echo n`); `peer` is the peer it was sent to (the would-be home)."""

    tag: int
    peer: str
    outcome: str  # ACKED (got OK <id>), UNKNOWN (sent, no reply), REJECTED (ERR)
    job_id: str | None = None


@dataclass(frozen=True)
class Observed:
    """What a job's home says about it at the end. `output` is its stdout
    (None when not fetched or not finished)."""

    job_id: str
    state: str
    attempt: int = 1
    executor: str = ""
    output: bytes | None = None
    runtime_ms: int | None = None  # of the final attempt, when the home reports it
    reason: str | None = None
    tries: str | None = None  # "k/N" (STATUS's try=), for a job with retries
    priority: int = 0
    submitted: float | None = None  # the home's wall clock when it accepted the job


@dataclass(frozen=True)
class JobOptions:
    """What the job-model workload asked of one submission (by tag).
    `after`/`after_any` are job ids; `fails`: every try exits non-zero."""

    priority: int = 0
    retries: int = 0
    fails: bool = False
    delay_s: float | None = None
    after: tuple[str, ...] = ()
    after_any: tuple[str, ...] = ()


def home_of(job_id: str) -> str:
    """The home peer named by a job id: everything before the last '-'."""
    return job_id.rpartition("-")[0]


def output_tag(output: bytes | None) -> int | None:
    """The tag a tagged shell job printed last (`; echo <n>`), or None."""
    if not output:
        return None
    last = output.rstrip(b"\n").rsplit(b"\n", 1)[-1].strip()
    return int(last) if last.isdigit() else None


def output_times(output: bytes | None) -> tuple[float | None, float | None]:
    """The `s=<start>` and `e=<end>` wall times a job-model job printed."""
    start = end = None
    for line in (output or b"").splitlines():
        if line.startswith(b"s="):
            start = _float(line[2:])
        elif line.startswith(b"e="):
            end = _float(line[2:])
    return start, end


def _float(text: bytes) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


TIME_SLACK_S = 0.02
"""Tolerance of the order checks: `submitted` is shown to the millisecond,
and `date` and the peer read the clock at different moments."""


@dataclass
class Verdict:
    acked: int = 0
    unknown: int = 0
    rejected: int = 0
    recovered: int = 0  # unknown submissions whose job turned out to exist
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unexpected_count: int = 0  # jobs beyond the unknowns (untagged runs cannot name them all)
    reexecuted: list[str] = field(default_factory=list)
    extra_attempts: int = 0
    lost_states: dict[str, int] = field(default_factory=dict)
    model: list[str] = field(default_factory=list)  # job-model violations, each a sentence
    model_counts: dict[str, int] = field(default_factory=dict)  # what the job model checked

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.mismatched or self.unexpected_count or self.model)

    def summary(self) -> dict:
        return {
            "acked": self.acked,
            "unknown": self.unknown,
            "rejected": self.rejected,
            "recovered": self.recovered,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "mismatched": len(self.mismatched),
            "unexpected": self.unexpected_count,
            "reexecuted": len(self.reexecuted),
            "extra_attempts": self.extra_attempts,
            "lost_states": dict(self.lost_states),
            "model": len(self.model),
            "model_counts": dict(self.model_counts),
            "examples": {
                "model": self.model[:EXAMPLES_MAX],
                "lost": self.lost[:EXAMPLES_MAX],
                "duplicated": self.duplicated[:EXAMPLES_MAX],
                "mismatched": self.mismatched[:EXAMPLES_MAX],
                "unexpected": self.unexpected[:EXAMPLES_MAX],
                "reexecuted": self.reexecuted[:EXAMPLES_MAX],
            },
        }


def check(
    submissions: list[Submission],
    observed: dict[str, Observed],
    listed: dict[str, list[str]] | None = None,
    *,
    tagged: bool,
    done_states: frozenset[str] = frozenset({"done"}),
    options: dict[int, JobOptions] | None = None,
    timing: bool = True,
) -> Verdict:
    """Classify every submission and every job found.

    `observed` holds every job the peers have (each peer enumerated at home);
    `listed` maps a peer to the ids its LIST returned. `tagged`: the jobs
    print their tag, so outputs can be matched to submissions. `options`:
    the job model's options by tag (tagged runs only); `timing`: whether the
    times jobs print can be compared (not when each peer's clock is stepped).
    """
    v = Verdict()
    listed = listed or {}
    acked_by_id, tag_sent, unknown_at = _tally(v, submissions)
    dup: set[str] = set()
    lost_states: Counter[str] = Counter()
    _judge_acked(v, acked_by_id, observed, tagged, done_states, dup, lost_states, options or {}, timing)

    # Listed more than once, at one peer or across peers.
    seen: Counter[str] = Counter()
    for ids in listed.values():
        seen.update(ids)
    for job_id, n in seen.items():
        if n > 1:
            dup.add(job_id)

    # Jobs that exist without an acknowledgement.
    extras = sorted(
        (set(observed) | set(seen)) - set(acked_by_id),
        key=lambda j: (home_of(j), int(j.rpartition("-")[2]) if j.rpartition("-")[2].isdigit() else 0),
    )
    if tagged:
        _judge_extras_by_tag(v, extras, acked_by_id, observed, tag_sent, unknown_at, dup)
    else:
        _judge_extras_by_count(v, extras, observed, unknown_at)
    v.duplicated = sorted(dup)
    v.lost_states = dict(lost_states)
    return v


def _tally(v: Verdict, submissions: list[Submission]) -> tuple[dict, dict, Counter]:
    """Count the outcomes; the acknowledged submissions by id, the best
    outcome of each tag (ACKED / UNKNOWN), and the unknown ones per peer."""
    acked_by_id: dict[str, list[Submission]] = defaultdict(list)
    tag_sent: dict[int, str] = {}  # tag -> ACKED / UNKNOWN (the best outcome it had)
    unknown_at: Counter[str] = Counter()
    for s in submissions:
        if s.outcome == ACKED:
            v.acked += 1
            acked_by_id[s.job_id].append(s)
            tag_sent[s.tag] = ACKED
        elif s.outcome == UNKNOWN:
            v.unknown += 1
            unknown_at[s.peer] += 1
            tag_sent.setdefault(s.tag, UNKNOWN)
        else:
            v.rejected += 1
    return acked_by_id, tag_sent, unknown_at


def _judge_acked(v: Verdict, acked_by_id: dict[str, list[Submission]], observed: dict[str, Observed], tagged: bool,
                 done_states: frozenset[str], dup: set[str], lost_states: Counter,
                 options: dict[int, JobOptions], timing: bool) -> None:
    """Acknowledged: each must be done at its home (or, with the job model,
    in the state its options call for), once, with its own output."""
    counts: Counter[str] = Counter()
    for job_id, subs in sorted(acked_by_id.items()):
        if len(subs) > 1:
            dup.add(job_id)  # one id promised to two submissions
        obs = observed.get(job_id)
        opts = options.get(subs[0].tag)
        expected = done_states if opts is None else _expected_states(opts, observed)
        if obs is None or obs.state not in expected:
            v.lost.append(job_id if obs is None or opts is None else f"{job_id} {obs.state} (expected "
                          f"{'/'.join(sorted(expected))})")
            lost_states["missing" if obs is None else obs.state] += 1
            continue
        tries = _tries(obs.tries)
        if obs.attempt > tries:
            v.reexecuted.append(job_id)
            v.extra_attempts += obs.attempt - tries
        if tagged and obs.state != "cancelled" and output_tag(obs.output) != subs[0].tag:
            v.mismatched.append(job_id)
        if opts is not None:
            counts[obs.state] += 1
            counts["retried"] += tries > 1
            v.model += _judge_options(job_id, obs, opts, observed, timing, counts)
    if options:
        v.model_counts = dict(sorted(counts.items()))


def _tries(text: str | None) -> int:
    k = (text or "1/1").partition("/")[0]
    return int(k) if k.isdigit() else 1


def _expected_states(opts: JobOptions, observed: dict[str, Observed]) -> frozenset[str]:
    deps = [observed.get(d) for d in opts.after]
    if any(d is not None and d.state in ("failed", "cancelled") for d in deps):
        return frozenset({"cancelled"})
    return frozenset({"failed" if opts.fails else "done"})


def _judge_options(job_id: str, obs: Observed, opts: JobOptions, observed: dict[str, Observed], timing: bool,
                   counts: Counter) -> list[str]:
    """A final job against its options: the reason of a cancellation, the
    fields that must have survived, and (from the printed times) the order
    of its start after its dependencies' ends and its due time."""
    out = []
    if obs.state == "cancelled":
        if obs.reason != "dependency-failed":
            out.append(f"{job_id} cancelled reason={obs.reason}, expected dependency-failed")
        return out
    if obs.priority != opts.priority:
        out.append(f"{job_id} shows priority {obs.priority}, submitted with {opts.priority}")
    if opts.retries and (obs.tries is None or not obs.tries.endswith(f"/{opts.retries + 1}")):
        out.append(f"{job_id} shows try={obs.tries}, submitted with --retries {opts.retries}")
    if not timing:
        return out
    start, _ = output_times(obs.output)
    if start is None:
        out.append(f"{job_id} {obs.state} printed no start time")
        return out
    if opts.delay_s is not None and obs.submitted is not None:
        counts["delay_checked"] += 1
        if start + TIME_SLACK_S < obs.submitted + opts.delay_s:
            out.append(f"{job_id} started at {start:.3f}, before its due time {obs.submitted + opts.delay_s:.3f} "
                       f"(submitted {obs.submitted:.3f} + --delay {opts.delay_s:g})")
    for dep in opts.after + opts.after_any:
        d = observed.get(dep)
        end = output_times(d.output)[1] if d is not None else None
        if d is None or d.state not in ("done", "failed", "cancelled"):
            out.append(f"{job_id} ran although its dependency {dep} is {d.state if d else 'missing'}")
        elif dep in opts.after and d.state != "done":
            out.append(f"{job_id} ran although its afterok dependency {dep} ended {d.state}")
        elif end is not None:
            counts["dependency_order_checked"] += 1
            if start + TIME_SLACK_S < end:
                out.append(f"{job_id} started at {start:.3f}, before its dependency {dep} ended ({end:.3f})")
    return out


def _judge_extras_by_tag(v: Verdict, extras: list[str], acked_by_id: dict[str, list[Submission]],
                         observed: dict[str, Observed], tag_sent: dict[int, str], unknown_at: Counter,
                         dup: set[str]) -> None:
    """Jobs without an acknowledgement, when outputs name their submission:
    a tag sent with an unknown outcome is recovered, a second id for one tag
    is a duplicate, a tag never sent is unexpected; silent ones are judged
    by count, against the unknown outcomes at their home."""
    owners: dict[int, list[str]] = defaultdict(list)
    for job_id in acked_by_id:
        obs = observed.get(job_id)
        tag = output_tag(obs.output) if obs is not None else None
        if tag is not None:
            owners[tag].append(job_id)
    untold: dict[str, list[str]] = defaultdict(list)
    recovered_at: Counter[str] = Counter()
    for job_id in extras:
        obs = observed.get(job_id)
        tag = output_tag(obs.output) if obs is not None else None
        if obs is None:  # listed, but its home does not know it
            v.unexpected.append(job_id)
            v.unexpected_count += 1
        elif tag is None:  # unfinished or silent: judged by count below
            untold[home_of(job_id)].append(job_id)
        elif tag in tag_sent:
            owners[tag].append(job_id)  # a second id for an acked job is caught just below
            if tag_sent[tag] == UNKNOWN:
                recovered_at[home_of(job_id)] += 1
        else:
            v.unexpected.append(job_id)  # its output names no submission
            v.unexpected_count += 1
    for ids in owners.values():
        if len(ids) > 1:
            dup.update(ids)
    v.recovered += sum(recovered_at.values())
    for peer, ids in untold.items():
        allowed = max(0, unknown_at[peer] - recovered_at[peer])
        v.recovered += min(len(ids), allowed)
        if len(ids) > allowed:
            v.unexpected_count += len(ids) - allowed
            v.unexpected.extend(ids)


def _judge_extras_by_count(v: Verdict, extras: list[str], observed: dict[str, Observed], unknown_at: Counter) -> None:
    """Jobs without an acknowledgement, when outputs say nothing: each peer
    may hold as many as it had submissions with an unknown outcome."""
    per_peer: dict[str, list[str]] = defaultdict(list)
    for job_id in extras:
        if job_id not in observed:
            v.unexpected.append(job_id)
            v.unexpected_count += 1
        else:
            per_peer[home_of(job_id)].append(job_id)
    for peer, ids in per_peer.items():
        allowed = unknown_at[peer]
        v.recovered += min(len(ids), allowed)
        if len(ids) > allowed:
            v.unexpected_count += len(ids) - allowed
            v.unexpected.extend(ids)  # which of them are the extra ones cannot be told


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
