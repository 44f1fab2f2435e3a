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

With the job model (`--job-model`), "done" is the state each job's options
call for, and **model** violations count too (sim/checker_jobmodel.py).

The figures (membership timings of each kill, the load imbalance over time,
percentiles) are pure functions too, in sim/checker_stats.py (importable from
here). Nothing here does I/O, reads a clock or draws random numbers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sim.checker_jobmodel import (  # noqa: F401
    JobOptions,
    array_elements,
    expected_states,
    judge_array,
    judge_options,
    output_times,
    tries_of,
)
from sim.checker_stats import Kill, imbalance_series, kill_timings, median, percentile  # noqa: F401 -- names kept here

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


def home_of(job_id: str) -> str:
    """The home peer named by a job id: everything before the last '-'."""
    return job_id.rpartition("-")[0]


def output_tag(output: bytes | None) -> int | None:
    """The tag a tagged shell job printed last (`; echo <n>`), or None."""
    if not output:
        return None
    last = output.rstrip(b"\n").rsplit(b"\n", 1)[-1].strip()
    return int(last) if last.isdigit() else None


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

    # Jobs that exist without an acknowledgement (an acked array's elements are judged with it).
    elements = {e for job_id, subs in acked_by_id.items() if (options or {}).get(subs[0].tag) is not None
                and options[subs[0].tag].array is not None for e in array_elements(job_id, options[subs[0].tag])}
    extras = sorted(
        (set(observed) | set(seen)) - set(acked_by_id) - elements,
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
        if opts is not None and opts.array is not None:
            lost, model = judge_array(job_id, subs[0].tag, opts, observed, timing, counts)
            v.lost += lost
            lost_states.update("missing" if x.endswith(" missing") else "element" for x in lost)
            v.model += model
            continue
        expected = done_states if opts is None else expected_states(opts, observed)
        if obs is None or obs.state not in expected:
            v.lost.append(job_id if obs is None or opts is None else f"{job_id} {obs.state} (expected "
                          f"{'/'.join(sorted(expected))})")
            lost_states["missing" if obs is None else obs.state] += 1
            continue
        tries = tries_of(obs.tries)
        if obs.attempt > tries:
            v.reexecuted.append(job_id)
            v.extra_attempts += obs.attempt - tries
        if tagged and obs.state != "cancelled" and output_tag(obs.output) != subs[0].tag:
            v.mismatched.append(job_id)
        if opts is not None:
            counts[obs.state] += 1
            counts["retried"] += tries > 1
            v.model += judge_options(job_id, obs, opts, observed, timing, counts)
    if options:
        v.model_counts = dict(sorted(counts.items()))


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
