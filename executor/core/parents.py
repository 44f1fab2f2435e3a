"""Jobs that make jobs: arrays (`--array A-B[%M]`) and periodic jobs
(`--every S`, `--cron EXPR`). A mixin of `PeerCore`; no I/O.

A *parent* is a record of its own (g/<id>), never held nor run: it makes
*children*, ordinary jobs `<id>.<i>` with the parent's spec, each balanced,
stolen, retried and fenced like any job (executor/core/schedule.py admits
them). A child is made in the same batch as the parent's update that counts
it (`next_index`), so no crash makes a child twice or skips one.

* An array makes its elements A..B; with `%M` only M are live (not final) at
  once — the next is made when one ends — which caps how many run at once
  cluster-wide, since every element's record lives here. The array is final
  when every element is: `done` if all are, `cancelled` if it was cancelled,
  else `failed`.
* A periodic job makes run k at its k-th due time (wall clock, on the grid
  `submitted + k × every`, or the cron expression's next match in UTC).
  A due time missed while the peer was down makes one run, late, and the
  next is the next due time after now: runs are neither doubled nor made up
  for. A run is made even if the previous one still runs (as cron does).
  CANCEL stops it (and its live run).

Counts by state are memory only, rebuilt from the children's records at
restart; the parent record stores only what the children cannot tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from executor.core.errors import ClientError, ErrorCode
from executor.core.events import _Waiter
from executor.core.ids import order_key, parent_of
from executor.core.jobs import JobRecord, JobState
from executor.core.protocol import format_fields, ok
from executor.core.spec import JobSpec, Submit, next_cron, spec_from_wire
from storage import layout


@dataclass(slots=True)
class Parent:
    job_id: str
    spec: JobSpec
    submitted_at: float
    first: int = 0  # array: the first and last index, the cap on live elements (0: none)
    last: int = 0
    cap: int = 0
    every_s: float | None = None  # periodic: the period
    cron: str | None = None  # periodic: the schedule (UTC), instead of a period
    due_at: float | None = None  # array: its elements' due time; periodic: the next run's
    next_index: int = 0  # the next child to make
    cancelled: bool = False
    # Children final, by state: stored (a final child may be forgotten before its parent is).
    ended: dict[str, int] = field(default_factory=dict)
    finished_at: float | None = None  # when it became final (its retention counts from then)
    # Memory only (rebuilt at restart from the children's records): children made and not final.
    live: dict[str, None] = field(default_factory=dict)
    last_child: str | None = None

    @property
    def periodic(self) -> bool:
        return self.every_s is not None or self.cron is not None

    def will_make(self, index: int) -> bool:
        """Is child `index` still to be made?"""
        return index >= self.next_index and (self.periodic or index <= self.last)

    @property
    def final(self) -> bool:
        if self.periodic:
            return self.cancelled and not self.live
        return not self.live and (self.cancelled or self.next_index > self.last)

    @property
    def state(self) -> str:
        if not self.final:
            return JobState.SCHEDULED.value if self.periodic else JobState.RUNNING.value  # (an array: see _parent_text)
        if self.cancelled:
            return JobState.CANCELLED.value
        return JobState.DONE.value if set(self.ended) <= {JobState.DONE.value} else JobState.FAILED.value

    def to_wire(self) -> dict:
        return {"id": self.job_id, "k": self.spec.kind, "c": self.spec.command, "ms": self.spec.sleep_ms,
                "to": self.spec.timeout_s, "o": self.spec.options_wire(), "t": self.submitted_at,
                "ar": [self.first, self.last, self.cap], "ev": self.every_s, "due": self.due_at,
                "n": self.next_index, "x": self.cancelled, "cr": self.cron, "end": self.ended,
                "tf": self.finished_at}

    @classmethod
    def from_wire(cls, d: dict) -> Parent:
        first, last, cap = d["ar"]
        return cls(d["id"], spec_from_wire(d["k"], d["c"], d["ms"], d["to"], d["o"]), d["t"], first, last, cap,
                   d["ev"], d["cr"], d["due"], d["n"], d["x"], dict(d["end"]), d["tf"])


class ParentsMixin:
    def _submit_parent(self, job_id: str, command: Submit) -> None:
        """A new array or periodic job, written with its first children in this batch."""
        parent = Parent(job_id, command.spec, self._wall)
        if command.array is not None:
            parent.first, parent.last, parent.cap = command.array
            parent.next_index = parent.first
            if command.delay_s is not None:
                parent.due_at = self._wall + command.delay_s
            else:
                parent.due_at = command.at
        else:
            parent.every_s, parent.cron = command.every_s, command.cron
            parent.next_index = 1
            start = self._wall + (command.delay_s or 0.0) if command.at is None else command.at
            parent.due_at = start if parent.cron is None else next_cron(parent.cron, start)
        self.parents[job_id] = parent
        if parent.periodic:
            self.periodic[job_id] = parent
        self._make_children(parent)
        self._put_parent(parent)

    def _make_children(self, parent: Parent) -> None:
        """Make the children that are due: array elements up to the cap, or
        a periodic job's run whose time has come."""
        if parent.cancelled:
            return
        if parent.periodic:
            if parent.due_at is None or parent.due_at > self._wall:
                return
            self._make_child(parent, Submit(parent.spec))
            if parent.cron is not None:
                parent.due_at = next_cron(parent.cron, self._wall)
            else:
                missed = math.floor((self._wall - parent.due_at) / parent.every_s)  # periods slept through
                parent.due_at += (missed + 1) * parent.every_s
            self._put_parent(parent)
            return
        while parent.next_index <= parent.last and (parent.cap == 0 or len(parent.live) < parent.cap):
            self._make_child(parent, Submit(parent.spec, at=parent.due_at))

    def _make_child(self, parent: Parent, command: Submit) -> None:
        job_id = f"{parent.job_id}.{parent.next_index}"
        parent.next_index += 1
        parent.live[job_id] = None
        parent.last_child = job_id
        record = JobRecord(job_id, parent.spec, self._wall, executor=self.peer_id)
        self.records[job_id] = record
        self.counters.submitted += 1
        self._admit(record, command)

    def _child_final(self, record: JobRecord) -> None:
        """A child became final: count it, make the next one, and finish the
        parent when it was the last."""
        parent = self.parents.get(parent_of(record.job_id) or "")
        if parent is None or record.job_id not in parent.live:
            return
        del parent.live[record.job_id]
        parent.ended[record.state.value] = parent.ended.get(record.state.value, 0) + 1
        self._make_children(parent)
        if parent.final:
            self._parent_final(parent)
        self._put_parent(parent)  # its counts, in the batch that makes the child final

    def _parent_final(self, parent: Parent) -> None:
        parent.finished_at = self._wall
        for waiter in self.waiters.pop(parent.job_id, ()):
            self._reply(waiter.token, ok(self._parent_text(parent)))
        self._became_final_id(parent.job_id, parent.state, parent.finished_at, parent.spec.keep_s)

    def _tick_parents(self) -> None:
        for parent in self.periodic.values():
            self._make_children(parent)

    def _cancel_parent(self, token: Any, parent: Parent) -> None:
        if parent.final or parent.cancelled:
            raise ClientError(ErrorCode.FINISHED, f"job {parent.job_id} is already {parent.state}")
        parent.cancelled = True
        self.periodic.pop(parent.job_id, None)
        self._put_parent(parent)
        live = list(parent.live)
        for job_id in live:  # the last one's end finishes the parent (_child_final)
            self._cancel_record(self.records[job_id], "cancelled")
        if not live:
            self._parent_final(parent)
            self._put_parent(parent)
        self._reply(token, ok(f"{parent.job_id} cancelled"))

    def _parent_text(self, parent: Parent) -> str:
        counts = dict(parent.ended)
        for job_id in parent.live:
            state = self.records[job_id].state.value
            counts[state] = counts.get(state, 0) + 1
        if parent.periodic:
            every = {"cron": parent.cron.replace(" ", "_")} if parent.cron else {"every": f"{parent.every_s:g}"}
            fields = every | {"runs": parent.next_index - 1, "last_run": parent.last_child,
                      "next": None if parent.cancelled else f"{parent.due_at:.3f}"}
        else:
            cap = f"%{parent.cap}" if parent.cap else ""
            fields = {"array": f"{parent.first}-{parent.last}{cap}", "elements": parent.last - parent.first + 1,
                      "pending": parent.last + 1 - parent.next_index}
        fields |= {state.value: counts[state.value] for state in JobState if counts.get(state.value)}
        fields["submitted"] = f"{parent.submitted_at:.3f}"
        state = parent.state
        if not parent.final and not parent.periodic and parent.live:
            # An array whose live elements all wait (or are all scheduled) says so.
            states = {self.records[job_id].state for job_id in parent.live}
            if len(states) == 1 and states <= {JobState.WAITING, JobState.SCHEDULED}:
                state = states.pop().value
        return f"{parent.job_id} {state} {format_fields(fields)}"

    def _on_parent_command(self, token: Any, verb: str, parent: Parent, now: float, timeout_s: float | None) -> None:
        if verb == "status":
            self._reply(token, ok(self._parent_text(parent)))
        elif verb == "wait":
            if parent.final:
                self._reply(token, ok(self._parent_text(parent)))
            else:
                timeout = timeout_s if timeout_s is not None else self.config.wait_max_s
                self.waiters.setdefault(parent.job_id, []).append(_Waiter(token, now + timeout))
        elif verb == "cancel":
            self._cancel_parent(token, parent)
        else:
            raise ClientError(ErrorCode.BAD_REQUEST, f"{parent.job_id} is an array or a periodic job: "
                              f"ask for one of its jobs, {parent.job_id}.<i>")

    def _put_parent(self, parent: Parent) -> None:
        self._writes.append((layout.key(layout.PARENT, parent.job_id), layout.encode(parent.to_wire())))

    def _restore_parents(self, snap: layout.Snapshot) -> None:
        for d in snap.parents():
            parent = Parent.from_wire(d)
            self.parents[parent.job_id] = parent
            if parent.periodic and not parent.cancelled:
                self.periodic[parent.job_id] = parent
        for job_id in sorted((j for j in self.records if parent_of(j) in self.parents), key=order_key):
            parent, record = self.parents[parent_of(job_id)], self.records[job_id]
            parent.last_child = job_id
            if not record.state.final:
                parent.live[job_id] = None
        for parent in self.parents.values():
            if parent.final:
                end = parent.finished_at if parent.finished_at is not None else parent.submitted_at
                self._became_final_id(parent.job_id, parent.state, end, parent.spec.keep_s)

    def _resume_parents(self) -> None:
        """After the restore: make what came due while the peer was down
        (a periodic job's missed run, once, late)."""
        for parent in list(self.parents.values()):
            self._make_children(parent)
