"""One peer's edge, as executor/node.py runs it: the core handles one event,
its immediate actions (start, kill, log, membership sends) happen at once,
its writes and remaining actions join the pending batch, and one disk syncs
batches one at a time (group commit, pipelined); only a synced batch's
replies and sends are carried out.
"""

from __future__ import annotations

from executor.core import KillJob, Log, PeerMessage, Reply, ReplyResult, Send, StartJob, carry_out
from gossip.membership import GOSSIP_MESSAGES
from sim.simulation.base import (
    _JOB_PREFIXES,
    _SLOW_DISK_SYNC_S,
    _SYNC,
    _TICK_EVENT,
    InvariantViolation,
    _Peer,
)


class EdgeMixin:
    """The core loop and the committer of every simulated peer."""

    def _step(self, peer: _Peer, event) -> None:
        core = peer.core
        now = self.now
        core.handle(event, now, now + peer.wall_offset)
        self.report.steps += 1
        if self.opts.trace:
            self.out.write(f"{now!r} {peer.idx} {event!r}\n")
        if self.opts.hash_trace:
            self.hash.update(f"{now!r} {peer.idx} {_digest(event)}\n".encode())
        writes, actions = core.take()
        if self.opts.job_model:
            self._model_writes(peer, writes)

        def at_once(action) -> None:
            kind = type(action)
            if kind is StartJob:
                self._start_job(peer, action)
            elif kind is KillJob:
                self._kill_job(peer, action)
            elif kind is Log:
                if self.opts.trace:
                    self.out.write(f"{now!r} {peer.idx} log {action.text}\n")
            elif kind is Send:
                self._send(peer, action)  # membership's: it never waits behind the disk
            else:
                raise InvariantViolation(f"{peer.name}: unexpected immediate action {action!r}")

        def durably(writes, later) -> None:
            # The simulated disk: this batch joins the pending one, synced
            # after a seeded delay (_commit), and its actions wait for it.
            peer.pending_writes += writes
            peer.pending_actions += later

        carry_out(writes, actions, at_once=at_once, durably=durably)
        if not peer.syncing and (peer.pending_writes or peer.pending_actions):
            self._commit(peer)
        self._check_step(peer, event)

    def _commit(self, peer: _Peer) -> None:
        writes, actions = peer.pending_writes, peer.pending_actions
        peer.pending_writes, peer.pending_actions = [], []
        if writes:
            peer.syncing = True
            peer.in_sync = (writes, actions)
            rng = self.disk_rng
            if self.now < peer.slow_until:
                delay = rng.uniform(*_SLOW_DISK_SYNC_S)  # this peer's disk is slow for a while (a fault)
            elif self.fault_phase and self.opts.slow_syncs > 0 and rng.random() < self.opts.slow_syncs:
                delay = rng.uniform(0.05, 0.5)  # a stalled disk (a fault)
            else:
                delay = rng.uniform(0.0002, 0.002)
            self._push(self.now + delay, _SYNC, peer.idx, peer.epoch)
        else:
            self._carry_out(peer, actions)
            self._flush_ack_checks()

    def _flush_ack_checks(self) -> None:
        for job_id in self.ack_checks:
            self._check_safe(job_id, "just acknowledged")
        self.ack_checks.clear()

    def _sync_done(self, peer: _Peer) -> None:
        writes, actions = peer.in_sync
        peer.in_sync = None
        peer.syncing = False
        self.report.syncs += 1
        durable = peer.store.durable
        touched: dict[bytes, bytes | None] = {}
        for key, _ in writes:
            if key[:2] in _JOB_PREFIXES and key not in touched:
                touched[key] = durable.get(key)
        peer.store.write(writes, sync=True)
        if self.opts.hash_trace:
            self.hash.update(b"".join(k + b"=" + (v if v is not None else b"-") + b";" for k, v in writes))
        self._carry_out(peer, actions)
        self._check_touched(peer, touched)
        self._flush_ack_checks()
        if peer.pending_writes or peer.pending_actions:
            self._commit(peer)

    def _carry_out(self, peer: _Peer, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self._send(peer, action)
            elif kind is Reply or kind is ReplyResult:
                self._reply(peer, action)
            elif kind is StartJob:
                self._start_job(peer, action)  # a job its batch released (after_sync)
            else:
                raise InvariantViolation(f"{peer.name}: unexpected deferred action {action!r}")


def _digest(event) -> str:
    """What the trace hash takes of an event delivered to a core: all of it,
    except a gossip message's piggybacked updates (their effects show up in
    the durable writes and in every later event; their repr was a tenth of
    the run time at 200 peers)."""
    if type(event) is PeerMessage:
        msg = event.message
        if isinstance(msg, GOSSIP_MESSAGES):
            return f"{event.sender} {type(msg).__name__} {msg.from_incarnation} {getattr(msg, 'seq', '')}"
    elif event is _TICK_EVENT:
        return "Tick"
    return repr(event)
