"""Messages between executors about jobs: steals, handoffs, locations, results.

Frozen dataclasses registered with the one peer codec (`gossip.wire`), which
checks every field's type on decode, so a misbehaving peer gets a protocol
error and cannot corrupt state. The protocols they serve are written up in
docs/cluster.md:

* steal:   thief --StealRequest--> victim --Handoff--> thief --HandoffAck--> victim
* push:    home  --Handoff--> lighter peer --HandoffAck--> home
* where:   new holder --JobMoved--> home          (queued or running there)
* result:  executor --JobResult--> home --ResultAck--> executor
* cancel:  home --CancelJob--> executor
* audit:   home --Audit(ids)--> recorded holder --AuditReply(missing)--> home
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.wire import message


@message("job")
@dataclass(frozen=True, slots=True)
class JobTransfer:
    job_id: str
    home: str
    kind: str
    command: str
    sleep_ms: int
    timeout_s: float | None
    attempt: int
    moves: int
    submitted_at: float
    # What the executor needs of the job's options (executor/core/spec.py);
    # the rest stays in the home's record.
    priority: int = 0
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    slots: int = 1


@message("steal")
@dataclass(frozen=True, slots=True)
class StealRequest:
    request_id: int
    thief: str
    queued: int
    running: int
    slots: int
    want: int


@message("handoff")
@dataclass(frozen=True, slots=True)
class Handoff:
    """Jobs offered to the receiver. `request_id` names the steal it answers
    (0 for a push). An empty handoff is a refusal."""

    transfer_id: int
    sender: str
    request_id: int
    jobs: tuple[JobTransfer, ...]
    queued: int  # the sender's load once these jobs left it: first-hand news
    running: int
    slots: int


@message("handoff-ack")
@dataclass(frozen=True, slots=True)
class HandoffAck:
    """The receiver has made every job of the transfer durable."""

    transfer_id: int
    receiver: str
    queued: int  # the receiver's load with those jobs: first-hand news
    running: int
    slots: int


@message("moved")
@dataclass(frozen=True, slots=True)
class JobMoved:
    job_id: str
    attempt: int
    moves: int
    executor: str
    running: bool


@message("result")
@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    attempt: int
    executor: str
    exit_code: int | None
    reason: str | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    started_at: float | None
    finished_at: float


@message("result-ack")
@dataclass(frozen=True, slots=True)
class ResultAck:
    job_id: str
    attempt: int


@message("cancel")
@dataclass(frozen=True, slots=True)
class CancelJob:
    job_id: str


@message("audit")
@dataclass(frozen=True, slots=True)
class Audit:
    """The home asks the peer it believes holds these jobs whether it does."""

    auditor: str
    job_ids: tuple[str, ...]


@message("audit-reply")
@dataclass(frozen=True, slots=True)
class AuditReply:
    """The jobs of an Audit this peer neither queues, runs, lends, nor has a
    result for."""

    holder: str
    missing: tuple[str, ...]


@message("deps?")
@dataclass(frozen=True, slots=True)
class DependencyQuery:
    """A home asks another home where some of its jobs stand: jobs of ours
    wait for them (docs/cluster.md, dependencies)."""

    asker: str
    job_ids: tuple[str, ...]


@message("deps")
@dataclass(frozen=True, slots=True)
class DependencyReply:
    """`states`: one (job id, state) per id asked; the state is "unknown"
    for an id the home has no record of (never issued, or forgotten)."""

    home: str
    states: tuple[tuple[str, str], ...]
