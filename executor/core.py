"""The peer's decision core: every event in, writes and actions out. No I/O.

Theory of operation
-------------------
A peer is one `PeerCore` fed events by its edge (`executor/node.py` for real
peers, `sim/` for the deterministic simulation):

* `ClientRequest` — a parsed client command with an opaque reply token;
* `JobExited` — the runner finished (or killed) a job;
* `PeerMessage` — a decoded frame from another peer (gossip or job traffic);
* `PeerUnreachable` — a link to a peer broke or could not be opened;
* `ClientClosed` — a connection went away (its pending WAITs are dropped);
* `Tick` — time passed: WAIT deadlines, membership timers, balancing,
  result resends, handoff timeouts, re-issue of jobs stranded on dead peers.

Handling an event mutates the core's memory and appends to two buffers: the
*writes* that must become durable and the *actions* the edge carries out (reply
to a client, start or kill a job, send a message). The edge handles a batch of
events, takes both buffers with `take()`, writes the writes in ONE synced batch
and only then carries out the replies and sends. That is group commit, and it
is also the whole durability argument: nothing leaves the peer — no `OK` to a
client, no message to a peer — before the state it depends on is on disk. If
the peer crashes before the sync, nobody was told anything, and the restart
reads back the state as of the previous batch. Starting and killing jobs do not
wait for the sync: a job started early runs at worst for nobody (its SUBMIT was
never acknowledged) or once more after a crash (at-least-once).

Job flow at a glance (docs/cluster.md has every crash point):

    SUBMIT --> j/ + q/ written --> OK <id> --> (maybe pushed) --> queue --> Start
    Start --> running (j/, q/ marked) --> JobExited --> result written
           home here:  j/ final + o/ output, q/ deleted in the same batch
           home away:  x/ outbox + q/ deleted, JobResult sent until ResultAck

The core draws no random numbers of its own (a seeded `random.Random` is
passed in) and reads no clock (`now` comes with each event), so the same code
runs under hypothesis and in the seeded simulation.

Two clocks come with each event. `now` is monotonic: every deadline, lease,
timer and back-off (WAIT timeouts, handoff leases, result resends, steals,
re-issue grace, membership) runs on it, so a wall clock that jumps cannot fire
or freeze any of them. `wall` (default: `now`) is the wall clock, for display
and records only (`submitted=`, the start and finish times a record keeps).
Nothing measured on `now` is ever persisted: a restart starts a new timeline.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from executor import balance
from executor.config import Config
from gossip import membership as gossip
from executor.jobs import HeldJob, JobEvent, JobRecord, JobState
from executor.messages import (
    Audit,
    AuditReply,
    CancelJob,
    Handoff,
    HandoffAck,
    JobMoved,
    JobResult,
    JobTransfer,
    ResultAck,
    StealRequest,
)
from executor.protocol import (
    HELP_LINES,
    Cancel,
    ClientError,
    Command,
    Help,
    JobSpec,
    ListJobs,
    Peers,
    Quit,
    Result,
    Status,
    Submit,
    Wait,
    err,
    format_fields,
    lines_reply,
    ok,
    split_job_id,
)
from storage import layout
from storage.store import StoreError, Write

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


Action = Reply | ReplyResult | StartJob | KillJob | Send | Log

IMMEDIATE_ACTIONS = (StartJob, KillJob, Log)
"""Actions an edge carries out at once, before the batch's writes are synced
(see the theory of operation above), with `Send`s of `wait_sync=False`; every
other action waits for the sync."""


def is_immediate(action: Action) -> bool:
    """Carried out before the batch's sync (see IMMEDIATE_ACTIONS)."""
    kind = type(action)
    return kind in IMMEDIATE_ACTIONS or (kind is Send and not action.wait_sync)


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
    forgotten: int = 0  # final records dropped past records_retained_max
    handoffs_refused: int = 0  # handoffs not taken while the disk was low
    results_refused: int = 0  # results from a peer that does not hold the job's current attempt
    outbox_dropped: int = 0  # results for homes forgotten for good
    batches: int = 0


class PeerCore:
    def __init__(
        self,
        peer_id: str,
        config: Config,
        slots: int,
        rng: random.Random,
        snapshot: layout.Snapshot,
        now: float,
        cluster: Any = None,
        wall: float | None = None,
    ) -> None:
        assert slots >= 1
        self.peer_id = peer_id
        self.config = config
        self.slots = slots
        self.rng = rng
        self.cluster = cluster  # executor.cluster.Cluster, or None for a lone peer
        self.counters = Counters()
        self.next_seq = snapshot.next_seq
        self.records: dict[str, JobRecord] = {}
        self.queue: OrderedDict[str, HeldJob] = OrderedDict()  # oldest first
        self.running: dict[str, HeldJob] = {}
        self.cancelled_running: set[str] = set()
        self.finished: OrderedDict[str, None] = OrderedDict()  # final records, oldest first
        # A newer attempt of a job whose older attempt still runs here (being
        # killed): durable in q/, queued when the old run has exited.
        self.superseded: dict[str, HeldJob] = {}
        self.waiters: dict[str, list[_Waiter]] = {}
        self.lends: dict[int, _Lend] = {}
        self.outbox: dict[str, _Outgoing] = {}
        # Home records whose job is at another peer. A dict used as an ordered set:
        # iteration order never depends on string hashing (the simulation's
        # trace must not change with PYTHONHASHSEED).
        self.remote_open: dict[str, None] = {}
        self.steals: dict[int, float] = {}  # request id -> deadline
        self._pushes: dict[str, list[HeldJob]] = {}  # receiver -> jobs to push at take()
        # Ids of steals and handoffs never repeat across restarts, so that an
        # ack from a previous life cannot match a new handoff.
        self.next_request_id = (snapshot.incarnation << 32) + 1
        self.next_steal_at = now
        self.next_reissue_scan_at = now
        self.next_audit_at = now + self.config.audit_interval_s
        self.next_orphan_scan_at = now
        self._audits: dict[str, dict[str, tuple[int, int]]] = {}  # holder -> {job: (attempt, moves) asked}
        self._missing: dict[str, tuple[int, int]] = {}  # job -> version its holder once said it lacks
        self.disk_low = False  # DiskSpace: no new work while the disk is (nearly) full
        self._writes: list[Write] = []
        self._actions: list[Action] = []
        self._now = now
        self._wall = now if wall is None else wall
        if cluster is not None:
            # Addresses known before the restart, so that what recovery has
            # to tell other peers (where their jobs are) can go out at once.
            for known_id, addr in snapshot.peers.items():
                cluster.heard_from(known_id, addr)
        self._restore(snapshot, now)

    # ------------------------------------------------------------------
    # The edge's interface

    def take(self) -> tuple[list[Write], list[Action]]:
        """Writes to make durable (one synced batch), then actions to carry out."""
        for target, jobs in self._pushes.items():
            for start in range(0, len(jobs), self.config.handoff_batch_max):
                self._lend(target, jobs[start : start + self.config.handoff_batch_max], 0, self._now)
        self._pushes.clear()
        writes, actions = self._writes, self._actions
        self._writes, self._actions = [], []
        if writes:
            self.counters.batches += 1
        return writes, actions

    def handle(self, event: Event, now: float, wall: float | None = None) -> None:
        """`now`: the monotonic clock, for every deadline; `wall`: the wall
        clock, for what records show (defaults to `now`, as in the simulation)."""
        self._now = now
        self._wall = now if wall is None else wall
        kind = type(event)
        if kind is ClientRequest:
            self._on_client(event.token, event.command, now)
        elif kind is JobExited:
            self._on_exited(event, now)
        elif kind is Tick:
            self._on_tick(now)
        elif kind is PeerMessage:
            if event.sender_addr is not None and self.cluster is not None:
                self.cluster.heard_from(event.sender, event.sender_addr)
            self._on_peer_message(event.sender, event.message, now)
        elif kind is PeerUnreachable:
            if self.cluster is not None:
                self._absorb(self.cluster.unreachable(event.peer_id, now), now)
        elif kind is ClientClosed:
            self._drop_waiters(event.connection)
        elif kind is DiskSpace:
            if event.low != self.disk_low:
                self._log(f"disk {'low' if event.low else 'ok again'}: {event.free_bytes} bytes free "
                          f"(threshold {self.config.disk_free_bytes_min}); "
                          f"{'SUBMIT and handoffs are refused' if event.low else 'taking work again'}")
            self.disk_low = event.low
        else:
            raise TypeError(f"unknown event {event!r}")
        self._dispatch(now)

    def handle_join(self, seeds: list[str], known: dict[str, str], now: float) -> None:
        """Start membership: contact the seeds and the peers known before a restart."""
        self._absorb(self.cluster.join(seeds, known, now), now)

    def _absorb(self, actions: list, now: float) -> None:
        """Carry membership's actions into ours (sends) and our store."""
        for action in actions:
            kind = type(action)
            if kind is gossip.Send:
                self._actions.append(Send(action.to_id, action.to_addr, action.msg, wait_sync=False))
            elif kind is gossip.PersistIncarnation:
                # In this batch, so synced before any send that carries it.
                self._writes.append((layout.META_INCARNATION, layout.encode(action.incarnation)))
            elif kind is gossip.MemberChanged:
                member = action.member
                self.cluster.note_state(member.id, member.state, now)
                self._writes.append((layout.key(layout.PEER, member.id), layout.encode(member.addr)))
                if member.state is gossip.MemberState.ALIVE:
                    self._home_is_back(member.id, now)
                before = action.previous.state.value if action.previous is not None else "unknown"
                self._log(f"peer {member.id} at {member.addr}: {before} -> {member.state.value} "
                          f"(incarnation {member.incarnation})")
            elif kind is gossip.MemberForgotten:
                self._writes.append((layout.key(layout.PEER, action.peer_id), None))
                self._orphan_outbox(action.peer_id, now)
                # Bounded by the member table: a forgotten peer counts as dead
                # since our start (Cluster.dead_for), long past any grace.
                self.cluster.dead_since.pop(action.peer_id, None)

    def validate_state(self) -> None:
        """Assert every invariant of this core's memory (after dask's worker
        state machine). Cheap enough for tests and the simulation to call
        after every step; an AssertionError here is our bug, never a peer's."""
        queued, running, superseded = set(self.queue), set(self.running), set(self.superseded)
        assert not queued & running, f"queued and running at once: {sorted(queued & running)}"
        assert len(running) <= self.slots, f"{len(running)} running on {self.slots} slots"
        assert superseded <= running, f"a newer attempt waits for no older run: {sorted(superseded - running)}"
        assert self.cancelled_running <= running, "a kill pending for a job not running"
        for job_id, job in self.queue.items():
            assert job.job_id == job_id and not job.running, f"queue entry {job_id} is not a waiting job"
        for job_id, job in self.running.items():
            assert job.job_id == job_id and job.running, f"running entry {job_id} is not marked running"
        finals = set()
        for job_id, record in self.records.items():
            assert record.job_id == job_id and split_job_id(job_id)[0] == self.peer_id, f"record {job_id} not ours"
            assert split_job_id(job_id)[1] < self.next_seq, f"record {job_id} beyond next_seq {self.next_seq}"
            assert record.floor <= record.attempt, f"{job_id}: floor {record.floor} above attempt {record.attempt}"
            if record.state.final:
                finals.add(job_id)
                assert job_id not in self.waiters, f"{job_id} is final but has waiters"
        assert finals == set(self.finished), "the finished list and the final records disagree"
        assert len(self.finished) <= self.config.records_retained_max, "more final records than retained"
        remote = {j for j, r in self.records.items() if not r.state.final and r.executor != self.peer_id}
        assert remote == set(self.remote_open), f"remote_open is off by {sorted(remote ^ set(self.remote_open))[:5]}"
        assert set(self.waiters) <= set(self.records), "a waiter for a job with no record"
        for job_id, out in self.outbox.items():
            assert out.result.job_id == job_id and out.home != self.peer_id, f"outbox entry {job_id} is wrong"

    @property
    def load(self) -> balance.PeerLoad:
        return balance.PeerLoad(self.peer_id, len(self.queue), len(self.running), self.slots)

    # ------------------------------------------------------------------
    # Recovery

    def _restore(self, snap: layout.Snapshot, now: float) -> None:
        """Rebuild memory from the store after a start or a crash.

        Every job held here goes back in the queue, oldest first; one that was
        running when the peer died runs again as a new attempt, and its home
        hears of it. Results still in the outbox are resent.
        """
        # Records are built one at a time from the store (no table of decoded
        # dicts: a restart's peak memory is its steady memory), then put in
        # the peer's own sequence order, not the store's key order (`n1-10`
        # sorts before `n1-2` as text): LIST shows newest first the same
        # before and after a restart.
        records = sorted((JobRecord.from_wire(d) for d in snap.jobs()), key=lambda r: split_job_id(r.job_id)[1])
        for record in records:
            self.records[record.job_id] = record
            if not record.state.final and record.executor != self.peer_id:
                self.remote_open[record.job_id] = None
        if records:
            self.next_seq = max(self.next_seq, split_job_id(records[-1].job_id)[1] + 1)
        finals = [r for r in records if r.state.final]
        for record in sorted(finals, key=lambda r: (r.finished_at or 0.0, split_job_id(r.job_id)[1])):
            self.finished[record.job_id] = None
        del records, finals
        held = sorted((self._share(HeldJob.from_wire(d)) for d in snap.held()),
                      key=lambda j: (j.submitted_at, split_job_id(j.job_id)[1]))
        for job in held:
            if job.running:
                job.running = False
                job.attempt += 1
                job.moves = 0
                self.counters.reexecuted += 1
                self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))
            self.queue[job.job_id] = job
            self._report_location(job, now)
        for d in snap.outbox():
            result = JobResult(**d["r"])
            self.outbox[result.job_id] = _Outgoing(result, d["h"], now, self.config.result_retry_s)
        # A home record that says "here" but has no held copy was lost in no
        # batch we wrote (record and q/ always change together); requeue it
        # rather than trust that invariant blindly.
        for record in self.records.values():
            if not record.state.final and record.executor == self.peer_id and record.job_id not in self.queue:
                self._log(f"job {record.job_id} was recorded here but not held; requeued")
                self._hold(self._held_from_record(record, record.attempt + 1), now, persist=True)

    def _share(self, job: HeldJob) -> HeldJob:
        """A job held at its home shares its id, spec and submission time
        with its record, as it does when it is submitted: a queued job costs
        one set of them, before and after a restart alike."""
        record = self.records.get(job.job_id)
        if record is not None and job.home == self.peer_id:
            job.job_id = record.job_id
            if job.spec == record.spec:
                job.spec = record.spec
            if job.submitted_at == record.submitted_at:
                job.submitted_at = record.submitted_at
        return job

    def _held_from_record(self, record: JobRecord, attempt: int) -> HeldJob:
        return HeldJob(record.job_id, self.peer_id, record.spec, attempt, 0, record.submitted_at)

    # ------------------------------------------------------------------
    # Clients

    def _on_client(self, token: Any, command: Command, now: float) -> None:
        kind = type(command)
        try:
            if kind is Submit:
                self._submit(token, command.spec, now)
            elif kind is Status:
                self._reply(token, self._status_line(self._home_record(command.job_id)))
            elif kind is Result:
                self._result(token, self._home_record(command.job_id))
            elif kind is Wait:
                self._wait(token, command, now)
            elif kind is Cancel:
                self._cancel(token, self._home_record(command.job_id), now)
            elif kind is ListJobs:
                latest = []
                for job_id in reversed(self.records):
                    latest.append(self._status_text(self.records[job_id]))
                    if len(latest) >= command.count:
                        break
                self._reply(token, lines_reply("jobs", latest))
            elif kind is Peers:
                self._reply(token, lines_reply("peers", self._peer_lines()))
            elif kind is Help:
                self._reply(token, lines_reply("lines", list(HELP_LINES)))
            elif kind is Quit:
                self._actions.append(Reply(token, ok("bye"), close=True))
            else:
                raise TypeError(f"unknown command {command!r}")
        except ClientError as exc:
            self._reply(token, exc.reply())

    def _reply(self, token: Any, data: bytes) -> None:
        self._actions.append(Reply(token, data))

    def _home_record(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        if record is not None:
            return record
        home, seq = split_job_id(job_id)
        if home == self.peer_id:
            forgotten = f"; finished jobs beyond the latest {self.config.records_retained_max} are forgotten"
            raise ClientError("not-found", f"no job {job_id} (this peer has issued {self.next_seq - 1}{forgotten})")
        where = self.cluster.address_of(home) if self.cluster is not None else None
        at = f" at {where}" if where else ""
        raise ClientError("not-home", f"job {job_id} belongs to peer {home}{at}; ask it there")

    def _submit(self, token: Any, spec: JobSpec, now: float) -> None:
        if self.disk_low:
            raise ClientError("disk-full", "the disk of this peer is (nearly) full; nothing was stored, "
                                           "submit again later or to another peer")
        if len(self.queue) >= self.config.queue_jobs_max:
            self.counters.busy_rejections += 1
            raise ClientError("busy", f"{len(self.queue)} jobs queued here (bound {self.config.queue_jobs_max}); retry later")
        seq = self.next_seq
        self.next_seq += 1
        job_id = f"{self.peer_id}-{seq}"
        record = JobRecord(job_id, spec, self._wall, executor=self.peer_id)
        self.records[job_id] = record
        self.counters.submitted += 1
        self._writes.append((layout.key(layout.JOB, job_id), layout.encode(record.to_wire())))
        self._writes.append((layout.META_SEQ, layout.encode(self.next_seq)))
        self._hold(self._held_from_record(record, 1), now, persist=True)
        self._reply(token, ok(job_id))
        if self.cluster is not None and job_id in self.queue:
            target = self.cluster.push_target(self.load)
            if target is not None:
                # Pushed at the end of the batch, all jobs for one peer in one handoff.
                self._pushes.setdefault(target, []).append(self.queue.pop(job_id))
                self.cluster.moved(target, 1)

    def _result(self, token: Any, record: JobRecord) -> None:
        if not record.state.final:
            raise ClientError("not-finished", f"job {record.job_id} is {record.state.value}")
        if record.stdout_bytes or record.stderr_bytes:
            self._actions.append(ReplyResult(token, record.job_id))
        else:
            self._reply(token, result_reply(record, b"", b""))

    def _wait(self, token: Any, command: Wait, now: float) -> None:
        record = self._home_record(command.job_id)
        if record.state.final:
            self._reply(token, self._status_line(record))
            return
        timeout = command.timeout_s if command.timeout_s is not None else self.config.wait_max_s
        self.waiters.setdefault(record.job_id, []).append(_Waiter(token, now + timeout))

    def _drop_waiters(self, connection: Any) -> None:
        for job_id in list(self.waiters):
            kept = [w for w in self.waiters[job_id] if w.token[0] != connection]
            if kept:
                self.waiters[job_id] = kept
            else:
                del self.waiters[job_id]

    def _wake(self, record: JobRecord) -> None:
        for waiter in self.waiters.pop(record.job_id, ()):
            self._reply(waiter.token, self._status_line(record))

    def _cancel(self, token: Any, record: JobRecord, now: float) -> None:
        if record.state.final:
            raise ClientError("finished", f"job {record.job_id} is already {record.state.value}")
        record.apply(JobEvent.CANCEL)
        record.finished_at = self._wall
        record.reason = "cancelled"
        self.counters.cancelled += 1
        self._put_record(record)
        self._retire(record.job_id)
        self._drop_held(record.job_id)
        if record.executor != self.peer_id and self.cluster is not None:
            self._send(record.executor, CancelJob(record.job_id))
        self.remote_open.pop(record.job_id, None)
        self._reply(token, ok(f"{record.job_id} cancelled"))
        self._wake(record)

    def _drop_held(self, job_id: str) -> None:
        """Stop holding a job: unqueue it, or kill it if it runs here."""
        if self.superseded.pop(job_id, None) is not None:
            self._writes.append((layout.key(layout.HELD, job_id), None))
        if job_id in self.queue:
            del self.queue[job_id]
            self._writes.append((layout.key(layout.HELD, job_id), None))
        elif job_id in self.running and job_id not in self.cancelled_running:
            # The slot stays taken until the process is really gone.
            self.cancelled_running.add(job_id)
            self._actions.append(KillJob(job_id, self.running[job_id].attempt))

    def _status_text(self, record: JobRecord) -> str:
        fields = {
            "attempt": record.attempt,
            "executor": record.executor or "-",
            "exit": record.exit_code,
            "reason": record.reason,
            "submitted": f"{record.submitted_at:.3f}",
            "runtime_ms": (
                round((record.finished_at - record.started_at) * 1000)
                if record.finished_at is not None and record.started_at is not None
                else None
            ),
        }
        return f"{record.job_id} {record.state.value} {format_fields(fields)}"

    def _status_line(self, record: JobRecord) -> bytes:
        return ok(self._status_text(record))

    def _peer_lines(self) -> list[str]:
        if self.cluster is not None:
            return self.cluster.peer_lines(self.load)
        load = self.load
        return [f"{self.peer_id} - alive incarnation=- queued={load.queued} running={load.running} slots={load.slots} self"]

    # ------------------------------------------------------------------
    # Running jobs here

    def _hold(self, job: HeldJob, now: float, *, persist: bool, front: bool = False) -> None:
        self.queue[job.job_id] = job
        if front:
            self.queue.move_to_end(job.job_id, last=False)
        if persist:
            self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))

    def _dispatch(self, now: float) -> None:
        """Start queued jobs, oldest first, while slots are free."""
        while self.queue and len(self.running) < self.slots:
            job_id, job = self.queue.popitem(last=False)
            job.running = True
            job.started_at = now  # monotonic: the runtime is measured on it
            self.running[job_id] = job
            self.counters.started += 1
            self._writes.append((layout.key(layout.HELD, job_id), layout.encode(job.to_wire())))
            if job.home == self.peer_id:
                record = self.records.get(job_id)
                if record is not None and not record.state.final:
                    record.apply(JobEvent.START)
                    record.attempt = max(record.attempt, job.attempt)
                    record.started_at = self._wall
                    record.executor = self.peer_id
                    self.remote_open.pop(job_id, None)
                    self._put_record(record)
            else:
                self._report_location(job, now)
            timeout = job.spec.timeout_s or self.config.job_timeout_default_s
            self._actions.append(StartJob(job_id, job.attempt, job.spec, timeout))

    def _on_exited(self, ev: JobExited, now: float) -> None:
        job = self.running.get(ev.job_id)
        if job is None or job.attempt != ev.attempt:
            return  # a stale report from a job we already let go of
        del self.running[ev.job_id]
        newer = self.superseded.pop(ev.job_id, None)
        if newer is not None:
            self._hold(newer, now, persist=False)  # q/ already holds it
        else:
            self._writes.append((layout.key(layout.HELD, ev.job_id), None))
        if not self.queue:
            self.next_steal_at = min(self.next_steal_at, now)  # a free slot and nothing queued
        if ev.job_id in self.cancelled_running:
            self.cancelled_running.discard(ev.job_id)
            return
        result = JobResult(
            job_id=ev.job_id, attempt=ev.attempt, executor=self.peer_id,
            exit_code=ev.exit_code, reason=ev.reason, stdout=ev.stdout, stderr=ev.stderr,
            truncated=ev.truncated, finished_at=self._wall,
            # Wall times for display whose difference is the monotonic runtime.
            started_at=self._wall - (now - job.started_at) if job.started_at is not None else None,
        )
        if job.home == self.peer_id:
            self._accept_result(result)
        else:
            retry_s = self.config.result_retry_s
            self.outbox[ev.job_id] = _Outgoing(result, job.home, now + retry_s, retry_s)
            self._writes.append(
                (layout.key(layout.OUTBOX, ev.job_id), layout.encode({"h": job.home, "r": _result_dict(result)}))
            )
            self._send(job.home, result)

    def _accept_result(self, result: JobResult) -> bool | None:
        """At the home: keep the first result of a job; ignore the rest.

        Fenced by the attempt and the holder: only the executor of record,
        running the current attempt, may finish a job. True: kept; False: a
        duplicate or stale result (acknowledged, so its sender stops); None:
        from a peer that is not the job's holder (not acknowledged: if it is
        an honest holder whose location report was lost, the audit settles
        where the job is, and its resends are answered once it is final)."""
        record = self.records.get(result.job_id)
        if record is None or record.state.final or result.attempt < max(record.floor, record.attempt):
            self.counters.results_duplicate += 1
            return False
        if result.executor != record.executor and result.executor != self.peer_id:
            # (A run here is a run we saw: our own results are never refused,
            # whatever stale location the record names.)
            self.counters.results_refused += 1
            return None
        succeeded = result.exit_code == 0 and result.reason is None
        record.apply(JobEvent.SUCCEED if succeeded else JobEvent.FAIL)
        record.attempt = result.attempt  # STATUS and RESULT name the run whose result this is
        record.executor = result.executor
        record.exit_code = result.exit_code
        record.reason = None if succeeded else (result.reason or "nonzero-exit")
        record.started_at = result.started_at
        record.finished_at = result.finished_at
        record.stdout_bytes = len(result.stdout)
        record.stderr_bytes = len(result.stderr)
        record.truncated = result.truncated
        if succeeded:
            self.counters.finished += 1
        else:
            self.counters.failed += 1
        self.remote_open.pop(record.job_id, None)
        self._put_record(record)
        if result.stdout or result.stderr:
            self._writes.append((layout.key(layout.OUTPUT, record.job_id), layout.encode([result.stdout, result.stderr])))
        self._retire(record.job_id)
        self._wake(record)
        self._drop_held(record.job_id)  # a re-issued copy here need not run now
        return True

    def _retire(self, job_id: str) -> None:
        """A record became final. Past `records_retained_max` final records,
        the oldest are forgotten with their output (ids are never reused, so
        a forgotten id can only ever be answered `not-found`)."""
        self.finished[job_id] = None
        self._missing.pop(job_id, None)
        while len(self.finished) > self.config.records_retained_max:
            old, _ = self.finished.popitem(last=False)
            del self.records[old]
            self._writes.append((layout.key(layout.JOB, old), None))
            self._writes.append((layout.key(layout.OUTPUT, old), None))
            self.counters.forgotten += 1

    def _put_record(self, record: JobRecord) -> None:
        self._writes.append((layout.key(layout.JOB, record.job_id), layout.encode(record.to_wire())))

    # ------------------------------------------------------------------
    # Timers

    def _on_tick(self, now: float) -> None:
        self._expire_waiters(now)
        if self.cluster is None:
            return
        self.cluster.set_local_load(self.load)
        self._absorb(self.cluster.tick(now), now)
        self._resend_results(now)
        self._expire_lends(now)
        self._maybe_steal(now)
        self._maybe_reissue(now)
        self._maybe_audit(now)

    def _expire_waiters(self, now: float) -> None:
        for job_id in list(self.waiters):
            kept = []
            for waiter in self.waiters[job_id]:
                if waiter.deadline <= now:
                    state = self.records[job_id].state.value
                    self._reply(waiter.token, err("timeout", f"job {job_id} is still {state}"))
                else:
                    kept.append(waiter)
            if kept:
                self.waiters[job_id] = kept
            else:
                del self.waiters[job_id]

    # ------------------------------------------------------------------
    # The cluster: messages between peers

    def _send(self, peer_id: str, msg: Any) -> None:
        if peer_id == self.peer_id:
            # Talking to ourselves (e.g. a result whose home is here after all):
            # handled now, in this batch, as if it had come back over a link.
            self._on_peer_message(self.peer_id, msg, self._now)
            return
        addr = self.cluster.address_of(peer_id) if self.cluster is not None else None
        if addr is None:
            return  # unknown peer: the retry timers try again once it is known
        self._actions.append(Send(peer_id, addr, msg))

    def _on_peer_message(self, sender: str, msg: Any, now: float) -> None:
        kind = type(msg)
        if kind is StealRequest:
            self._on_steal_request(msg, now)
        elif kind is Handoff:
            self._on_handoff(msg, now)
        elif kind is HandoffAck:
            self._on_handoff_ack(msg, now)
        elif kind is JobMoved:
            self._on_moved(msg, now)
        elif kind is JobResult:
            if self._accept_result(msg) is not None:
                self._send(msg.executor, ResultAck(msg.job_id, msg.attempt))
        elif kind is ResultAck:
            if msg.job_id in self.outbox and self.outbox[msg.job_id].result.attempt == msg.attempt:
                del self.outbox[msg.job_id]
                self._writes.append((layout.key(layout.OUTBOX, msg.job_id), None))
        elif kind is CancelJob:
            job_home = split_job_id(msg.job_id)[0]
            if job_home == sender:  # only the home may cancel
                self._drop_held(msg.job_id)
        elif kind is Audit:
            self._on_audit(msg)
        elif kind is AuditReply:
            self._on_audit_reply(msg, now)
        elif self.cluster is not None:
            self._absorb(self.cluster.receive(sender, msg, now), now)

    # --- stealing

    def _maybe_steal(self, now: float) -> None:
        for request_id, deadline in list(self.steals.items()):
            if deadline <= now:
                del self.steals[request_id]
        if now < self.next_steal_at or len(self.steals) >= self.config.steals_in_flight_max or self.disk_low:
            return
        self.next_steal_at = now + self.config.steal_interval_s
        me = self.load
        victim = self.cluster.victim(me)
        if victim is None:
            # Loads are gossiped once per probe period: looking again every
            # tick would mostly re-read the same news. A slot freeing up here
            # (see _on_exited) looks again at once.
            self.next_steal_at = now + self.config.steal_idle_recheck_s
            return
        want = balance.steal_request_size(me, victim, self.cluster.balance_config)
        if want <= 0:
            return
        request_id = self.next_request_id
        self.next_request_id += 1
        self.steals[request_id] = now + self.config.steal_timeout_s
        self._send(victim.peer_id, StealRequest(request_id, self.peer_id, me.queued, me.running, me.slots, want))

    def _on_steal_request(self, msg: StealRequest, now: float) -> None:
        thief = balance.PeerLoad(msg.thief, max(0, msg.queued), max(0, msg.running), max(1, msg.slots))
        self.cluster.observed(thief)
        give = balance.grant_size(self.load, thief, msg.want, self.cluster.balance_config)
        give = min(give, self.config.handoff_batch_max)
        # Give the oldest queued jobs: the thief has a free slot now, so they
        # start sooner there than here, which keeps the cluster close to one
        # global first-in, first-out order.
        jobs = [job for _, job in zip(range(give), self.queue.values())]
        for job in jobs:
            del self.queue[job.job_id]
        self.cluster.moved(msg.thief, len(jobs))
        self._lend(msg.thief, jobs, msg.request_id, now)

    def _lend(self, receiver: str, jobs: list[HeldJob], request_id: int, now: float) -> None:
        """Offer `jobs` (already out of the queue) to `receiver`; they stay
        held here, durable, until it acks (docs/cluster.md, handoff)."""
        transfer_id = self.next_request_id
        self.next_request_id += 1
        if jobs:
            self.lends[transfer_id] = _Lend(receiver, jobs, now + self.config.handoff_timeout_s)
        transfers = tuple(
            JobTransfer(
                job.job_id, job.home, job.spec.kind, job.spec.command, job.spec.sleep_ms,
                job.spec.timeout_s, job.attempt, job.moves + 1, job.submitted_at,
            )
            for job in jobs
        )
        me = self.load
        self._send(receiver, Handoff(transfer_id, self.peer_id, request_id, transfers, me.queued, me.running, me.slots))

    def _observed(self, peer_id: str, queued: int, running: int, slots: int) -> None:
        """A peer told us its exact load in a message of its own."""
        self.cluster.observed(balance.PeerLoad(peer_id, queued, running, max(1, slots)))

    def _on_handoff(self, msg: Handoff, now: float) -> None:
        self.steals.pop(msg.request_id, None)
        if not msg.jobs:
            self._observed(msg.sender, msg.queued, msg.running, msg.slots)
            return
        if self.disk_low:
            # Refused: no ack, so the sender keeps the jobs (and takes them
            # back when its lease ends); nothing here depends on them.
            self.counters.handoffs_refused += 1
            return
        for t in msg.jobs:
            here = self.queue.get(t.job_id) or self.running.get(t.job_id) or self.superseded.get(t.job_id)
            if here is not None and here.attempt >= t.attempt:
                continue  # a duplicate transfer: we already hold it
            record = self.records.get(t.job_id)
            if (record is not None and record.state.final) or (record is None and t.home == self.peer_id):
                continue  # it came home finished meanwhile (or so long ago it is forgotten)
            if record is not None and t.attempt < record.floor:
                continue  # an attempt this home re-issued: fenced (its newer attempt may be lent away now)
            spec = JobSpec(t.kind, t.command, t.sleep_ms, t.timeout_s)
            job = HeldJob(t.job_id, t.home, spec, t.attempt, t.moves, t.submitted_at)
            self._hold_newer(job, now)  # durable now: the ack below promises it
            self.counters.steals_in += 1
            self._report_location(job, now)
        self._observed(msg.sender, msg.queued, msg.running, msg.slots)
        # Sent only after the batch above is durable: the sender may forget them then.
        me = self.load
        self._send(msg.sender, HandoffAck(msg.transfer_id, self.peer_id, me.queued, me.running, me.slots))

    def _on_handoff_ack(self, msg: HandoffAck, now: float) -> None:
        self._observed(msg.receiver, msg.queued, msg.running, msg.slots)
        lend = self.lends.pop(msg.transfer_id, None)
        if lend is None or lend.receiver != msg.receiver:
            return  # already reclaimed after a timeout: both copies may run
        for job in lend.jobs:
            # A newer attempt of the job may have come here since the lend
            # (a re-issue, another handoff): its q/ entry is not this lend's.
            if not self._holds(job.job_id):
                self._writes.append((layout.key(layout.HELD, job.job_id), None))
            self.counters.steals_out += 1
            if job.home == self.peer_id:
                # The ack proves where the job is: the home's record says so
                # now, not only once the receiver's report arrives (which a
                # broken link may lose; the holder's results are fenced by it).
                record = self.records.get(job.job_id)
                if record is not None and not record.state.final and record.attempt == job.attempt:
                    self._move_record(record, job.attempt, job.moves + 1, msg.receiver, False)

    def _expire_lends(self, now: float) -> None:
        for transfer_id, lend in list(self.lends.items()):
            if lend.deadline <= now or lend.receiver in self.cluster.dead_since:
                del self.lends[transfer_id]
                self._log(f"handoff {transfer_id} to {lend.receiver} unacknowledged; took {len(lend.jobs)} jobs back")
                for job in reversed(lend.jobs):
                    held = self._held_attempt(job.job_id)
                    if held is None or held < job.attempt:  # never over a newer attempt that came meanwhile
                        self._hold(job, now, persist=False, front=True)

    # --- where jobs are, results, re-issue

    def _hold_newer(self, job: HeldJob, now: float) -> None:
        """Hold a newer attempt of a job, durably, in place of any older copy
        here. An older attempt still running is killed (its result is below
        the floor now) and the newer one runs once it has exited: never two
        runs of one job at once on this peer."""
        if job.job_id in self.running:
            self._drop_held(job.job_id)
            self.superseded[job.job_id] = job
            self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))
        else:
            self._hold(job, now, persist=True)  # replaces an older queued attempt

    def _held_attempt(self, job_id: str) -> int | None:
        """The attempt of the copy queued, running or waiting to run here."""
        job = self.queue.get(job_id) or self.superseded.get(job_id) or self.running.get(job_id)
        return None if job is None else job.attempt

    def _holds(self, job_id: str) -> bool:
        """Is a copy of the job here: queued, running, waiting to run, or lent?"""
        return (
            job_id in self.queue or job_id in self.running or job_id in self.superseded
            or any(job.job_id == job_id for lend in self.lends.values() for job in lend.jobs)
        )

    def _report_location(self, job: HeldJob, now: float) -> None:
        if job.home == self.peer_id:
            record = self.records.get(job.job_id)
            if record is not None and not record.state.final:
                self._move_record(record, job.attempt, job.moves, self.peer_id, job.running)
        else:
            self._send(job.home, JobMoved(job.job_id, job.attempt, job.moves, self.peer_id, job.running))

    def _move_record(self, record: JobRecord, attempt: int, moves: int, executor: str, running: bool) -> None:
        if (attempt, moves) < (record.attempt, record.moves):
            return  # an older report overtaken by a newer one
        state = record.state
        if (attempt, moves, executor) == (record.attempt, record.moves, record.executor) and (
                state is (JobState.RUNNING if running else JobState.QUEUED)):
            return  # nothing new (e.g. recovery re-reporting a job as it was): no write
        record.apply(JobEvent.START if running else JobEvent.MOVE)
        record.attempt, record.moves, record.executor = attempt, moves, executor
        if executor == self.peer_id:
            self.remote_open.pop(record.job_id, None)
        else:
            self.remote_open[record.job_id] = None
        self._put_record(record)

    def _on_moved(self, msg: JobMoved, now: float) -> None:
        record = self.records.get(msg.job_id)
        if record is None:
            return
        if record.state.final:
            # The job is finished or cancelled: tell its holder to drop it.
            self._send(msg.executor, CancelJob(msg.job_id))
            return
        self._move_record(record, msg.attempt, msg.moves, msg.executor, msg.running)

    def _home_is_back(self, peer_id: str, now: float) -> None:
        """A peer came (back) to life: results waiting for it go now, not
        after whatever back-off its absence had grown to."""
        for out in self.outbox.values():
            if out.home == peer_id:
                out.next_send_at = now
                out.backoff_s = self.config.result_retry_s
                out.orphaned_at = None

    def _orphan_outbox(self, home: str, now: float) -> None:
        """Membership forgot `home` (dead past its retention): its results
        wait `outbox_orphan_retain_s` more for it to come back (a long
        outage), then leave the outbox, at most `outbox_orphans_max` of them
        at once, oldest first. So the outbox stays bounded by the live
        members' results. A home that comes back later still finds every
        job: its audits find them missing here and re-issue them."""
        for out in self.outbox.values():
            if out.home == home and out.orphaned_at is None:
                out.orphaned_at = now
        self._drop_orphans(now)

    def _drop_orphans(self, now: float) -> None:
        orphans = sorted((out.orphaned_at, job_id) for job_id, out in self.outbox.items()
                         if out.orphaned_at is not None)
        excess = len(orphans) - self.config.outbox_orphans_max
        gone = [job_id for i, (since, job_id) in enumerate(orphans)
                if i < excess or now - since >= self.config.outbox_orphan_retain_s]
        for job_id in gone:
            del self.outbox[job_id]
            self._writes.append((layout.key(layout.OUTBOX, job_id), None))
        if gone:
            self.counters.outbox_dropped += len(gone)
            self._log(f"{len(gone)} results dropped from the outbox: their homes were forgotten long ago")

    def _resend_results(self, now: float) -> None:
        if now >= self.next_orphan_scan_at:
            self.next_orphan_scan_at = now + 1.0
            self._drop_orphans(now)
        for out in self.outbox.values():
            if out.next_send_at <= now:
                self._send(out.home, out.result)
                out.next_send_at = now + out.backoff_s
                out.backoff_s = min(out.backoff_s * 2, self.config.result_retry_max_s)

    def _maybe_reissue(self, now: float) -> None:
        """Re-issue jobs whose executor has stayed dead past the grace period."""
        if now < self.next_reissue_scan_at or not self.remote_open:
            return
        self.next_reissue_scan_at = now + min(1.0, self.config.reissue_grace_s / 4)
        for job_id in list(self.remote_open):
            record = self.records[job_id]
            dead_for = self.cluster.dead_for(record.executor, now)
            if dead_for is None or dead_for < self.config.reissue_grace_s:
                continue
            if self._holds(job_id):
                continue  # a copy is here (taken back from a handoff): it runs here
            self._reissue(record, now, f"executor {record.executor} dead for {dead_for:.1f}s")

    def _reissue(self, record: JobRecord, now: float, why: str) -> None:
        """Run the job again from here as a new attempt; results of older
        attempts are ignored from now on (they are below the floor)."""
        self._log(f"job {record.job_id}: {why}; re-issued")
        attempt = record.attempt + 1
        record.apply(JobEvent.REQUEUE)
        record.attempt = record.floor = attempt
        record.moves = 0
        record.executor = self.peer_id
        self.remote_open.pop(record.job_id, None)
        self._missing.pop(record.job_id, None)
        self.counters.reissued += 1
        self._put_record(record)
        self._hold_newer(self._held_from_record(record, attempt), now)

    # --- audits: does the peer we think holds a job really hold it?

    def _maybe_audit(self, now: float) -> None:
        if now < self.next_audit_at:
            return
        self.next_audit_at = now + self.config.audit_interval_s
        by_holder: dict[str, list[str]] = {}
        for job_id in self.remote_open:
            record = self.records[job_id]
            asked = by_holder.setdefault(record.executor, [])
            if len(asked) < self.config.audit_batch_max and self.cluster.is_alive(record.executor):
                asked.append(job_id)
        self._audits = {}
        for holder, job_ids in by_holder.items():
            if job_ids:
                self._audits[holder] = {j: (self.records[j].attempt, self.records[j].moves) for j in job_ids}
                self._send(holder, Audit(self.peer_id, tuple(job_ids)))

    def _on_audit(self, msg: Audit) -> None:
        missing = tuple(j for j in msg.job_ids[: self.config.audit_batch_max]
                        if not self._holds(j) and j not in self.outbox)
        self._send(msg.auditor, AuditReply(self.peer_id, missing))

    def _on_audit_reply(self, msg: AuditReply, now: float) -> None:
        """A job its recorded holder says it does not have, twice in a row
        with no news of the job in between, is re-issued. Once is not enough:
        the job may be in flight to a new holder whose report has not arrived
        yet (a re-issue then would only make it run twice)."""
        asked = self._audits.pop(msg.holder, {})
        missing = set(msg.missing)
        for job_id, version in asked.items():
            record = self.records.get(job_id)
            current = (
                record is not None and not record.state.final and record.executor == msg.holder
                and (record.attempt, record.moves) == version
            )
            if job_id not in missing or not current:
                self._missing.pop(job_id, None)
            elif self._missing.get(job_id) == version and not self._holds(job_id):
                self._reissue(record, now, f"{msg.holder} twice said it does not hold it")
            else:
                self._missing[job_id] = version

    def _log(self, text: str) -> None:
        self._actions.append(Log(text))


def result_reply(record: JobRecord, stdout: bytes, stderr: bytes) -> bytes:
    """`OK <id> <state> ... stdout=<n> stderr=<m> ...`, the n + m bytes, a newline.
    The counts are those of the bytes sent, so header and body cannot disagree."""
    fields = {
        "exit": "-" if record.exit_code is None else record.exit_code,
        "stdout": len(stdout),
        "stderr": len(stderr),
        "attempt": record.attempt,
        "executor": record.executor or "-",
        "truncated": "yes" if record.truncated else "no",
        "reason": record.reason,
    }
    return ok(f"{record.job_id} {record.state.value} {format_fields(fields)}") + stdout + stderr + b"\n"


def read_result(store: Any, job_id: str) -> bytes:
    """The reply to a `ReplyResult`, from one read of the store after the sync
    that made the record final (a final record and its output never change
    again, and are forgotten together, in one batch)."""
    try:
        raw = store.get(layout.key(layout.JOB, job_id))
        if raw is None:
            return err("not-found", f"job {job_id} was forgotten (records_retained_max) before its result could be sent")
        record = JobRecord.from_wire(layout.decode(raw, "job record"))
        output = store.get(layout.key(layout.OUTPUT, job_id))
        stdout, stderr = layout.decode(output, "output") if output is not None else (b"", b"")
    except StoreError as exc:  # a failed read fails this request only
        return err("storage", f"cannot read the result of {job_id}: {exc}")
    return result_reply(record, stdout, stderr)


def _result_dict(result: JobResult) -> dict:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}
