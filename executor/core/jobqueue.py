"""The queue of jobs held here to run: highest priority first, oldest first
within a priority. No I/O.

Its order is the order of everything that takes jobs from the queue: the
dispatcher starts its head, and a victim gives its head to a thief (the
thief has a free slot now), so high-priority work moves first and the
lowest-priority work moves last. One `OrderedDict` per priority present
(a handful in practice) keeps every operation O(1) but the choice of the
highest non-empty priority, which is O(distinct priorities). With every job
at priority 0 it is exactly the FIFO it replaces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from executor.core.jobs import HeldJob


class JobQueue:
    def __init__(self) -> None:
        self._by_priority: dict[int, OrderedDict[str, HeldJob]] = {}
        self._priority_of: dict[str, int] = {}
        self._order: list[int] = []  # the priorities present, highest first
        self.width = 0  # slots the queued jobs take (`--slots`): the queued part of the load

    def __len__(self) -> int:
        return len(self._priority_of)

    def __bool__(self) -> bool:
        return bool(self._priority_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._priority_of

    def __iter__(self) -> Iterator[str]:
        for priority in self._order:
            yield from self._by_priority[priority]

    def get(self, job_id: str) -> HeldJob | None:
        priority = self._priority_of.get(job_id)
        return None if priority is None else self._by_priority[priority][job_id]

    def __getitem__(self, job_id: str) -> HeldJob:
        return self._by_priority[self._priority_of[job_id]][job_id]

    def __setitem__(self, job_id: str, job: HeldJob) -> None:
        """Add at the back of its priority (or replace in place)."""
        if job_id in self._priority_of:
            del self[job_id]
        priority = job.spec.priority
        bucket = self._by_priority.get(priority)
        if bucket is None:
            bucket = self._by_priority[priority] = OrderedDict()
            self._order.append(priority)
            self._order.sort(reverse=True)
        bucket[job_id] = job
        self._priority_of[job_id] = priority
        self.width += job.spec.slots

    def __delitem__(self, job_id: str) -> None:
        priority = self._priority_of.pop(job_id)
        bucket = self._by_priority[priority]
        self.width -= bucket.pop(job_id).spec.slots
        if not bucket:
            del self._by_priority[priority]
            self._order.remove(priority)

    _NONE = object()

    def pop(self, job_id: str, default=_NONE) -> HeldJob:
        if job_id not in self._priority_of and default is not JobQueue._NONE:
            return default
        job = self[job_id]
        del self[job_id]
        return job

    def head(self, fits: int) -> tuple[str, HeldJob | None]:
        """The first job (in dispatch order) no wider than `fits` slots;
        ("", None) if there is none. O(1) unless jobs too wide come first."""
        for priority in self._order:
            for job_id, job in self._by_priority[priority].items():
                if job.spec.slots <= fits:
                    return job_id, job
        return "", None

    def move_to_end(self, job_id: str, last: bool = True) -> None:
        """Within its priority: to the back, or with `last=False` to the front."""
        self._by_priority[self._priority_of[job_id]].move_to_end(job_id, last=last)

    def values(self) -> Iterator[HeldJob]:
        for priority in self._order:
            yield from self._by_priority[priority].values()

    def items(self) -> Iterator[tuple[str, HeldJob]]:
        for priority in self._order:
            yield from self._by_priority[priority].items()
