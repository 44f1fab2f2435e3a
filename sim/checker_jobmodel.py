"""The chaos checker's judgement of the job model (`--job-model`): what a
final job must show given the options it was submitted with. Pure
functions over plain data, as sim/checker.py, which calls them for every
acknowledged job that has `JobOptions`.

The state each job must end in: failed for a job whose every try fails,
cancelled `dependency-failed` for one whose afterok dependency did not end
done, else done. **Model** violations: a dependent that started before a
dependency ended, a delayed job that started before its due time (both from
the start and end times the jobs print, on the one machine's clock), a
priority or a try count that did not survive, a wrong cancellation reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.checker import Observed


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
    env: str | None = None  # --env PJ_TAG=<env>: the job prints `env=<its value>`
    array: tuple[int, int, int] | None = None  # --array A-B%M: (A, B, M; 0: no cap); its elements `<id>.<i>`


def array_elements(job_id: str, opts: JobOptions) -> list[str]:
    first, last, _ = opts.array
    return [f"{job_id}.{i}" for i in range(first, last + 1)]


def judge_array(job_id: str, tag: int, opts: JobOptions, observed: dict[str, Observed], timing: bool,
                counts: Counter) -> tuple[list[str], list[str]]:
    """An acknowledged array: (its elements missing or not done, model
    violations). Each element is one job printing the array's tag, done once
    (a re-execution shows as its attempt); with `%M`, no more than M of them
    ran at once (from the start and end times they printed)."""
    from sim.checker import output_tag

    lost, out, spans = [], [], []
    for element in array_elements(job_id, opts):
        obs = observed.get(element)
        if obs is None or obs.state != "done":
            lost.append(f"{element} {obs.state if obs else 'missing'} (an element of array {job_id})")
            continue
        counts["array_elements"] += 1
        if output_tag(obs.output) != tag:
            out.append(f"{element} printed tag {output_tag(obs.output)}, its array {job_id} was submitted as {tag}")
        start, end = output_times(obs.output)
        if start is not None and end is not None:
            spans.append((start, end))
    parent = observed.get(job_id)
    if parent is not None and parent.state != ("done" if not lost else parent.state):
        out.append(f"array {job_id} shows {parent.state}, its elements all ended done")
    cap = opts.array[2]
    if cap and timing and spans:
        counts["array_cap_checked"] += 1
        # The most spans overlapping at once: at each start, those begun and not yet ended.
        most = max(sum(1 for s, e in spans if s <= start < e - TIME_SLACK_S) for start, _ in spans)
        if most > cap:
            out.append(f"array {job_id} (%{cap}) ran {most} elements at once (their printed start and end times)")
    return lost, out


def output_times(output: bytes | None) -> tuple[float | None, float | None]:
    """The `s=<start>` and `e=<end>` wall times a job-model job printed."""
    start = end = None
    for line in (output or b"").splitlines():
        if line.startswith(b"s="):
            start = _float(line[2:])
        elif line.startswith(b"e="):
            end = _float(line[2:])
    return start, end


def output_env(output: bytes | None) -> bytes | None:
    """The `env=<value>` line a job-model job printed (None: none)."""
    for line in (output or b"").splitlines():
        if line.startswith(b"env="):
            return line[4:]
    return None


def _float(text: bytes) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


TIME_SLACK_S = 0.02
"""Tolerance of the order checks: `submitted` is shown to the millisecond,
and `date` and the peer read the clock at different moments."""


def tries_of(text: str | None) -> int:
    k = (text or "1/1").partition("/")[0]
    return int(k) if k.isdigit() else 1


def expected_states(opts: JobOptions, observed: dict[str, Observed]) -> frozenset[str]:
    deps = [observed.get(d) for d in opts.after]
    if any(d is not None and d.state in ("failed", "cancelled") for d in deps):
        return frozenset({"cancelled"})
    return frozenset({"failed" if opts.fails else "done"})


def judge_options(job_id: str, obs: Observed, opts: JobOptions, observed: dict[str, Observed], timing: bool,
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
    if opts.env is not None and obs.output is not None:
        counts["env_checked"] += 1
        shown = output_env(obs.output)
        if shown != opts.env.encode():
            out.append(f"{job_id} printed env={shown!r}, submitted with --env PJ_TAG={opts.env}")
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
