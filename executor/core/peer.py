"""The peer's decision core: every event in, writes and actions out. No I/O.

Theory of operation
-------------------
A peer is one `PeerCore` fed events by its edge (`executor/edge/node.py` for real
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
from typing import Any

from executor.config import Config
from executor.core import balance
from executor.core.clients import ClientsMixin
from executor.core.events import (
    Action,
    ClientClosed,
    ClientRequest,
    Counters,
    DiskSpace,
    Event,
    JobExited,
    Log,
    PeerMessage,
    PeerUnreachable,
    Send,
    Tick,
    _Lend,
    _Outgoing,
    _Waiter,
)
from executor.core.handoff import HandoffMixin
from executor.core.jobqueue import JobQueue
from executor.core.jobs import HeldJob, JobRecord
from executor.core.messages import (
    Audit,
    AuditReply,
    CancelJob,
    DependencyQuery,
    DependencyReply,
    Handoff,
    HandoffAck,
    JobMoved,
    JobResult,
    ResultAck,
    StealRequest,
)
from executor.core.parents import Parent, ParentsMixin
from executor.core.protocol import split_job_id
from executor.core.queries import QueriesMixin
from executor.core.recovery import RecoveryMixin
from executor.core.running import RunningMixin
from executor.core.schedule import ScheduleMixin
from gossip import membership as gossip
from storage import layout
from storage.store import Write


class PeerCore(ClientsMixin, RunningMixin, ScheduleMixin, ParentsMixin, HandoffMixin, RecoveryMixin, QueriesMixin):
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
        self.cluster = cluster  # executor.core.cluster.Cluster, or None for a lone peer
        self.counters = Counters()
        self.next_seq = snapshot.next_seq
        self.records: dict[str, JobRecord] = {}
        self.queue = JobQueue()  # highest priority first, then oldest first
        self.running: dict[str, HeldJob] = {}
        self.running_width = 0  # slots the running jobs take (`--slots`)
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
        self._init_schedule()
        self.parents: dict[str, Parent] = {}  # arrays and periodic jobs submitted here
        self.periodic: dict[str, Parent] = {}  # the periodic ones still making runs
        self._restore(snapshot, now)
        self._restore_parents(snapshot)
        self._restore_schedule()
        self._resume_parents()

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
                self.cluster.forgotten(action.peer_id)

    def validate_state(self) -> None:
        """Assert every invariant of this core's memory (after dask's worker
        state machine). Cheap enough for tests and the simulation to call
        after every step; an AssertionError here is our bug, never a peer's."""
        queued, running, superseded = set(self.queue), set(self.running), set(self.superseded)
        assert not queued & running, f"queued and running at once: {sorted(queued & running)}"
        assert self.running_width == sum(job.spec.slots for job in self.running.values()), "running width is off"
        assert self.running_width <= self.slots, f"{self.running_width} slots taken of {self.slots}"
        assert self.queue.width == sum(job.spec.slots for job in self.queue.values()), "queue width is off"
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
        assert set(self.waiters) <= set(self.records) | set(self.parents), "a waiter for a job with no record"
        for job_id, out in self.outbox.items():
            assert out.result.job_id == job_id and out.home != self.peer_id, f"outbox entry {job_id} is wrong"
        self._validate_schedule()

    @property
    def load(self) -> balance.PeerLoad:
        return balance.PeerLoad(self.peer_id, self.queue.width, self.running_width, self.slots)

    def _on_tick(self, now: float) -> None:
        self._expire_waiters(now)
        self._release_due()
        self._tick_parents()
        self._expire_kept()
        if self.cluster is None:
            return
        self._poll_dependencies(now)
        self.cluster.set_local_load(self.load)
        self._absorb(self.cluster.tick(now), now)
        self._resend_results(now)
        self._expire_lends(now)
        self._maybe_steal(now)
        self._maybe_reissue(now)
        self._maybe_audit(now)

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
        elif kind is DependencyQuery:
            self._on_dependency_query(msg)
        elif kind is DependencyReply:
            self._on_dependency_reply(msg)
        elif self.cluster is not None:
            self._absorb(self.cluster.receive(sender, msg, now), now)

    def _log(self, text: str) -> None:
        self._actions.append(Log(text))
