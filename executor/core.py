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
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from executor import balance
from executor.config import Config
from gossip import membership as gossip
from executor.jobs import HeldJob, JobEvent, JobRecord
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


Event = ClientRequest | ClientClosed | JobExited | PeerMessage | PeerUnreachable | Tick

# ---------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class Reply:
    token: Any
    data: bytes
    close: bool = False


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """Reply `header`, then the stored output of `job_id`, then a newline."""

    token: Any
    header: bytes
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


@dataclass(frozen=True, slots=True)
class Log:
    text: str


Action = Reply | ReplyResult | StartJob | KillJob | Send | Log

IMMEDIATE_ACTIONS = (StartJob, KillJob, Log)
"""Actions an edge carries out at once, before the batch's writes are synced
(see the theory of operation above); every other action waits for the sync."""


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
        self.remote_open: set[str] = set()  # home records whose job is at another peer
        self.steals: dict[int, float] = {}  # request id -> deadline
        self._pushes: dict[str, list[HeldJob]] = {}  # receiver -> jobs to push at take()
        # Ids of steals and handoffs never repeat across restarts, so that an
        # ack from a previous life cannot match a new handoff.
        self.next_request_id = (snapshot.incarnation << 32) + 1
        self.next_steal_at = now
        self.next_reissue_scan_at = now
        self.next_audit_at = now + self.config.audit_interval_s
        self._audits: dict[str, dict[str, tuple[int, int]]] = {}  # holder -> {job: (attempt, moves) asked}
        self._missing: dict[str, tuple[int, int]] = {}  # job -> version its holder once said it lacks
        self._writes: list[Write] = []
        self._actions: list[Action] = []
        self._now = now
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

    def handle(self, event: Event, now: float) -> None:
        self._now = now
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
                self._actions.append(Send(action.to_id, action.to_addr, action.msg))
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
                # Bounded by the member table: a forgotten peer counts as dead
                # since our start (Cluster.dead_for), long past any grace.
                self.cluster.dead_since.pop(action.peer_id, None)

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
        for d in snap.jobs:
            record = JobRecord.from_wire(d)
            self.records[record.job_id] = record
            if not record.state.final and record.executor != self.peer_id:
                self.remote_open.add(record.job_id)
            self.next_seq = max(self.next_seq, split_job_id(record.job_id)[1] + 1)
        finals = [r for r in self.records.values() if r.state.final]
        for record in sorted(finals, key=lambda r: (r.finished_at or 0.0, split_job_id(r.job_id)[1])):
            self.finished[record.job_id] = None
        for d in sorted(snap.held, key=lambda d: (d["t"], split_job_id(d["id"])[1])):
            job = HeldJob.from_wire(d)
            if job.running:
                job.running = False
                job.attempt += 1
                job.moves = 0
                self.counters.reexecuted += 1
                self._writes.append((layout.key(layout.HELD, job.job_id), layout.encode(job.to_wire())))
            self.queue[job.job_id] = job
            self._report_location(job, now)
        for d in snap.outbox:
            result = JobResult(**d["r"])
            self.outbox[result.job_id] = _Outgoing(result, d["h"], now, self.config.result_retry_s)
        # A home record that says "here" but has no held copy was lost in no
        # batch we wrote (record and q/ always change together); requeue it
        # rather than trust that invariant blindly.
        for record in self.records.values():
            if not record.state.final and record.executor == self.peer_id and record.job_id not in self.queue:
                self._log(f"job {record.job_id} was recorded here but not held; requeued")
                self._hold(self._held_from_record(record, record.attempt + 1), now, persist=True)

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
        if len(self.queue) >= self.config.queue_jobs_max:
            self.counters.busy_rejections += 1
            raise ClientError("busy", f"{len(self.queue)} jobs queued here (bound {self.config.queue_jobs_max}); retry later")
        seq = self.next_seq
        self.next_seq += 1
        job_id = f"{self.peer_id}-{seq}"
        record = JobRecord(job_id, spec, now, executor=self.peer_id)
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
        fields = {
            "exit": "-" if record.exit_code is None else record.exit_code,
            "stdout": record.stdout_bytes,
            "stderr": record.stderr_bytes,
            "attempt": record.attempt,
            "executor": record.executor or "-",
            "truncated": "yes" if record.truncated else "no",
            "reason": record.reason,
        }
        header = ok(f"{record.job_id} {record.state.value} {format_fields(fields)}")
        if record.stdout_bytes or record.stderr_bytes:
            self._actions.append(ReplyResult(token, header, record.job_id))
        else:
            self._reply(token, header + b"\n")

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
        record.finished_at = now
        record.reason = "cancelled"
        self.counters.cancelled += 1
        self._put_record(record)
        self._retire(record.job_id)
        self._drop_held(record.job_id)
        if record.executor != self.peer_id and self.cluster is not None:
            self._send(record.executor, CancelJob(record.job_id))
        self.remote_open.discard(record.job_id)
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
            job.started_at = now
            self.running[job_id] = job
            self.counters.started += 1
            self._writes.append((layout.key(layout.HELD, job_id), layout.encode(job.to_wire())))
            if job.home == self.peer_id:
                record = self.records.get(job_id)
                if record is not None and not record.state.final:
                    record.apply(JobEvent.START)
                    record.attempt = max(record.attempt, job.attempt)
                    record.started_at = now
                    record.executor = self.peer_id
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
            truncated=ev.truncated, started_at=job.started_at, finished_at=now,
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

    def _accept_result(self, result: JobResult) -> bool:
        """At the home: keep the first result of a job; ignore the rest."""
        record = self.records.get(result.job_id)
        if record is None or record.state.final or result.attempt < record.floor:
            self.counters.results_duplicate += 1
            return False
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
        self.remote_open.discard(record.job_id)
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
            self._accept_result(msg)
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
        if now < self.next_steal_at or len(self.steals) >= self.config.steals_in_flight_max:
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
        for t in msg.jobs:
            here = self.queue.get(t.job_id) or self.running.get(t.job_id) or self.superseded.get(t.job_id)
            if here is not None and here.attempt >= t.attempt:
                continue  # a duplicate transfer: we already hold it
            record = self.records.get(t.job_id)
            if (record is not None and record.state.final) or (record is None and t.home == self.peer_id):
                continue  # it came home finished meanwhile (or so long ago it is forgotten)
            spec = JobSpec(t.kind, t.command, t.sleep_ms, t.timeout_s)
            job = HeldJob(t.job_id, t.home, spec, t.attempt, t.moves, t.submitted_at)
            if t.job_id in self.running:
                # An older attempt runs here; its home re-issued the job, so
                # that run's result would be ignored (below the floor). The
                # newer attempt is made durable now (the ack below promises
                # it) and runs once the old one is gone.
                self._drop_held(t.job_id)
                self.superseded[t.job_id] = job
                self._writes.append((layout.key(layout.HELD, t.job_id), layout.encode(job.to_wire())))
            else:
                self._hold(job, now, persist=True)  # replaces an older queued attempt
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
            self._writes.append((layout.key(layout.HELD, job.job_id), None))
            self.counters.steals_out += 1

    def _expire_lends(self, now: float) -> None:
        for transfer_id, lend in list(self.lends.items()):
            if lend.deadline <= now or lend.receiver in self.cluster.dead_since:
                del self.lends[transfer_id]
                self._log(f"handoff {transfer_id} to {lend.receiver} unacknowledged; took {len(lend.jobs)} jobs back")
                for job in reversed(lend.jobs):
                    self._hold(job, now, persist=False, front=True)

    # --- where jobs are, results, re-issue

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
        record.apply(JobEvent.START if running else JobEvent.MOVE)
        record.attempt, record.moves, record.executor = attempt, moves, executor
        if executor == self.peer_id:
            self.remote_open.discard(record.job_id)
        else:
            self.remote_open.add(record.job_id)
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

    def _resend_results(self, now: float) -> None:
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
        self.remote_open.discard(record.job_id)
        self._missing.pop(record.job_id, None)
        self.counters.reissued += 1
        self._put_record(record)
        self._hold(self._held_from_record(record, attempt), now, persist=True)

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
            elif self._missing.get(job_id) == version:
                self._reissue(record, now, f"{msg.holder} twice said it does not hold it")
            else:
                self._missing[job_id] = version

    def _log(self, text: str) -> None:
        self._actions.append(Log(text))


def _result_dict(result: JobResult) -> dict:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}
