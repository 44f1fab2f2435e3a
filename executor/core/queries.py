"""What the edges may read of a peer core: its public queries (a mixin of
`PeerCore`; no I/O). The edges (executor/edge/) call these, never the core's
fields, so the core may keep its memory however it likes. Records handed
out are copies: an edge cannot change the core's state by accident."""

from __future__ import annotations

import collections
import dataclasses
import heapq
from collections.abc import Callable

from executor.core.jobs import JobRecord


class QueriesMixin:
    def statistics(self) -> dict[str, int]:
        """Every counter of the core: jobs (`jobs_*`), queue and table sizes,
        and membership (`gossip_*`). The edge adds its own (links, clients)."""
        out = {f"jobs_{k}": v for k, v in dataclasses.asdict(self.counters).items()}
        out.update(issued=self.next_seq - 1, queued=len(self.queue), running=len(self.running), slots=self.slots,
                   records=len(self.records), outbox=len(self.outbox), lends=len(self.lends))
        if self.cluster is not None:
            membership = self.cluster.membership
            out["incarnation"] = membership.incarnation
            out.update({f"gossip_{k}": v for k, v in sorted(membership.statistics().items())})
        return out

    def finished_status(self, job_id: str) -> bytes | None:
        """STATUS's (and WAIT's) reply for `job_id` if it is a job of ours
        that is final, else None. A final record never changes again, so an
        edge may answer it at once, whatever else is in the inbox (the reader
        of a client that pipelines WAITs for finished jobs: no trip through
        the core each); the edge still checks that the record is durable."""
        record = self.records.get(job_id)
        if record is None or not record.state.final:
            return None
        return self._status_line(record)

    def job(self, job_id: str) -> JobRecord | None:
        """A copy of the home record of `job_id`, or None."""
        record = self.records.get(job_id)
        return None if record is None else dataclasses.replace(record)

    def find_jobs(self, limit: int, *, state: str | None = None, text: str | None = None,
                  key: Callable[[JobRecord], object]) -> list[JobRecord]:
        """Copies of the `limit` home records largest by `key` among those in
        `state` whose id or command holds `text` (the dashboard's list)."""
        matching = (r for r in self.records.values()
                    if (not state or r.state.value == state)
                    and (not text or text in r.job_id or text in r.spec.command))
        return [dataclasses.replace(r) for r in heapq.nlargest(limit, matching, key=key)]

    def job_total(self) -> int:
        return len(self.records)

    def finished_total(self) -> int:
        """Jobs of this home that finished (done or failed) since the start."""
        return self.counters.finished + self.counters.failed

    def job_counts(self) -> collections.Counter[str]:
        """Home records by state."""
        return collections.Counter(record.state.value for record in self.records.values())

    def member(self, peer_id: str):
        """Membership's view of `peer_id` (a frozen `gossip.Member`), or None."""
        return None if self.cluster is None else self.cluster.membership.member(peer_id)

    def members(self) -> list:
        """Every member membership knows (frozen `gossip.Member`s)."""
        return [] if self.cluster is None else list(self.cluster.membership.members())

    @property
    def incarnation(self) -> int:
        return 0 if self.cluster is None else self.cluster.membership.incarnation

    @property
    def disk_is_low(self) -> bool:
        """True while the core refuses new work for want of disk (DiskSpace)."""
        return self.disk_low
