"""What goes into a peer core and what comes out: events, actions, and the
small records the core keeps (waiters, lends, the outbox). No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from executor.core.jobs import HeldJob
from executor.core.messages import JobResult
from executor.core.protocol import Command, JobSpec
from storage.store import Write

# ---------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class ClientRequest:
    token: Any  # (connection id, request number): opaque to the core
    command: Command


@dataclass(frozen=True, slots=True)
class ClientClosed:
    connection: Any


@dataclass(frozen=True, slots=True)
class JobExited:
    job_id: str
    attempt: int
    exit_code: int | None
    reason: str | None  # None when the command exited by itself
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class PeerMessage:
    sender: str
    message: Any
    sender_addr: str | None = None  # from the link's hello: where to answer


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    peer_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """The data directory's free space crossed `disk_free_bytes_min`: below
    it (`low`), the peer takes no new work and keeps the rest for what it
    owes (results, cancels, membership); above it again, it takes work."""

    low: bool
    free_bytes: int


Event = ClientRequest | ClientClosed | JobExited | PeerMessage | PeerUnreachable | Tick | DiskSpace

# ---------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class Reply:
    token: Any
    data: bytes
    close: bool = False
    # The job whose record alone this reply shows (STATUS, WAIT of a job
    # already final): an edge may carry it out as soon as that record's last
    # write is durable, ahead of the rest of its batch (executor/edge/pipeline.py).
    about: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyTail:
    """Reply a TAIL of a job running here, from its live output (the edge
    holds it; docs/protocol.md has the framing)."""

    token: Any
    job_id: str
    attempt: int
    follow: bool


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """Reply the RESULT of `job_id`, read by the edge after the batch's sync:
    header and body from ONE read of the stored record and output
    (`read_result`), never a header made earlier with a body read later —
    the record may be forgotten in between (records_retained_max)."""

    token: Any
    job_id: str


@dataclass(frozen=True, slots=True)
class StartJob:
    job_id: str
    attempt: int
    spec: JobSpec
    timeout_s: float
    after_sync: bool = False  # carried out only once the batch is durable (a job released by it)
    started_at: float | None = None  # the core's clock when it started the job (a sleep job counts from it)


@dataclass(frozen=True, slots=True)
class KillJob:
    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Send:
    peer_id: str
    addr: str
    message: Any
    # Membership messages (probes, acks, gossip) promise nothing durable, so
    # they need not wait for the batch's sync: membership never waits behind
    # the disk. (A refutation's incarnation may go out before it is durable;
    # after a crash the restart bumps it again, and any claim about a higher
    # one is refuted as usual.) Job messages always wait.
    wait_sync: bool = True


@dataclass(frozen=True, slots=True)
class Log:
    text: str


Action = Reply | ReplyResult | ReplyTail | StartJob | KillJob | Send | Log

IMMEDIATE_ACTIONS = (StartJob, KillJob, Log)
"""Actions an edge carries out at once, before the batch's writes are synced
(see the theory of operation above), with `Send`s of `wait_sync=False`; every
other action waits for the sync."""


def is_immediate(action: Action) -> bool:
    """Carried out before the batch's sync (see IMMEDIATE_ACTIONS)."""
    kind = type(action)
    if kind is StartJob:
        return not action.after_sync
    return kind in IMMEDIATE_ACTIONS or (kind is Send and not action.wait_sync)


def carry_out(writes: list[Write], actions: list[Action], *, at_once: Callable[[Action], object],
              durably: Callable[[list[Write], list[Action]], object]) -> None:
    """THE edge contract, the one place every edge (executor/edge/node.py,
    the simulation, the tests' harnesses) takes a core's output through: the
    actions that promise nothing durable go to `at_once`, in order; then
    `durably(writes, later)` must make `writes` durable in one synced batch
    and only after that carry out `later`, in order. How and when it syncs is
    the edge's own (pipelined group commit, a simulated disk, a crash)."""
    later = []
    for action in actions:
        if is_immediate(action):
            at_once(action)
        else:
            later.append(action)
    durably(writes, later)


@dataclass(slots=True)
class _Waiter:
    token: Any
    deadline: float


@dataclass(slots=True)
class _Lend:
    """Jobs offered in a handoff, held until the receiver acks."""

    receiver: str
    jobs: list[HeldJob]
    deadline: float


@dataclass(slots=True)
class _Outgoing:
    """A result waiting in the outbox for its home's ack."""

    result: JobResult
    home: str
    next_send_at: float
    backoff_s: float
    orphaned_at: float | None = None  # when membership forgot its home (see _orphan_outbox)


@dataclass(slots=True)
class Counters:
    submitted: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    started: int = 0
    reexecuted: int = 0
    steals_out: int = 0  # jobs this peer gave away
    steals_in: int = 0  # jobs this peer received
    busy_rejections: int = 0
    results_duplicate: int = 0
    reissued: int = 0
    retried: int = 0  # failed tries run again (--retries)
    forgotten: int = 0  # final records dropped past records_retained_max
    handoffs_refused: int = 0  # handoffs not taken while the disk was low
    results_refused: int = 0  # results from a peer that does not hold the job's current attempt
    outbox_dropped: int = 0  # results for homes forgotten for good
    batches: int = 0  # write sets handed to the edge (several may ride one sync: STATS synced_batches)
