"""The core loop and the committer of a peer: group commit, pipelined.

The core loop is the only task that touches the core: it feeds it every
event waiting in the inbox and hands its output to the edge contract
(`carry_out`): starting and killing jobs and gossip at once, everything
that tells the outside world something after the committer's ONE synced
batch. Apart from executor/edge/node.py (what a peer is made of and how it
starts) because this is the durability argument of docs/architecture.md in
code, and reads best on its own. `Node` takes it in as a mixin.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import trio

from executor.core import (
    DiskSpace,
    JobExited,
    KillJob,
    Log,
    Reply,
    ReplyResult,
    ReplyTail,
    Send,
    StartJob,
    Tick,
    carry_out,
    read_result,
)
from executor.edge.sessions import _fill
from executor.edge.tail import LiveOutput
from storage.store import StoreError

log = logging.getLogger("peerjobs")


class StorageFailed(Exception):
    """A synced write failed: the peer stops (fail-stop); one line says why."""


@dataclass(frozen=True, slots=True)
class _ForgetLiveOutput:
    """The edge's own action, queued behind the batch in which the core
    handled a run's exit: every `ReplyTail` the core made while the job ran
    here is carried out before it, so each finds the run's output; no TAIL
    handled after that exit is answered from it (the core has let it go)."""

    key: tuple[str, int]  # (job id, attempt)


class CommitPipelineMixin:
    """The core loop, the committer and the actions they carry out (`Node`)."""

    async def _core_loop(self) -> None:
        """Feed events to the core; hand its output to the committer.

        Starting and killing jobs is carried out at once: a job that runs
        before its record is durable can at worst run for nobody (its SUBMIT
        was never acknowledged) or run again after a crash (at-least-once),
        and not waiting for the disk there keeps short jobs flowing. Everything
        that tells the outside world something waits for the committer.
        """
        core, inbox = self.core, self.inbox
        while True:
            event = await inbox.receive()
            now, wall = self.clock(), self.wall_clock()
            count = 0
            ended: list[_ForgetLiveOutput] = []
            while True:
                if type(event) is Tick:
                    self._tick_pending = False
                elif type(event) is JobExited:
                    ended.append(_ForgetLiveOutput((event.job_id, event.attempt)))
                core.handle(event, now, wall)
                count += 1
                if count >= self.config.commit_events_max:
                    break
                try:
                    event = inbox.receive_nowait()
                except trio.WouldBlock:
                    # Let the readers that are ready add their lines to this
                    # batch before it is cut: one fsync for all of them.
                    await trio.lowlevel.checkpoint()
                    try:
                        event = inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
            writes, actions = core.take()
            carry_out(writes, actions, at_once=self._execute, durably=self._commit_later)
            if ended:
                self._commit_later([], ended)
            # Clients already wait at commit_writes_max (_client_reader);
            # this is the last resort that keeps memory bounded.
            while len(self._pending_writes) >= 2 * self.config.commit_writes_max:
                await self._committed.park()

    def _commit_later(self, writes: list, actions: list) -> None:
        """The edge contract's durable half, pipelined: the committer syncs
        everything pending as one batch, then carries out its actions."""
        self._pending_writes += writes
        self._pending_actions += actions
        try:
            self._doorbell.send_nowait(None)
        except trio.WouldBlock:
            pass  # the committer will take this batch along with the last

    async def _committer(self, doorbell_recv) -> None:
        """Write everything pending in one synced batch, then carry out the
        actions that waited for it. While the disk syncs (in a worker thread:
        the event loop, and with it membership, never waits for the disk),
        the core goes on and the next batch fills up (group commit, pipelined).

        Fail-stop (after PostgreSQL's fsyncgate): a write or sync that fails
        leaves the log's state unknown, so the peer acknowledges nothing of
        that batch or after it, logs one line and stops (`StorageFailed`);
        the restart recovers everything acknowledged before."""
        async for _ in doorbell_recv:
            writes, actions = self._pending_writes, self._pending_actions
            self._pending_writes, self._pending_actions = [], []
            self._committed.unpark_all()
            if writes:
                started = time.perf_counter()
                try:
                    if self.store.blocks:
                        free = await trio.to_thread.run_sync(self._write, writes)
                    else:
                        free = self._write(writes)  # memory: cannot stall the loop
                except StoreError as exc:
                    raise StorageFailed(
                        f"{self.peer_id}: stopping: a synced write failed ({exc}); nothing of it was acknowledged. "
                        f"Check the disk of {self.data_dir} (space, errors in the kernel log), then restart the "
                        f"peer: it recovers every job acknowledged before") from None
                if self.on_commit is not None:
                    self.on_commit(len(writes), time.perf_counter() - started)
                await self._report_free(free)
            for action in actions:
                self._execute(action)

    def _write(self, writes) -> int | None:
        """In a worker thread: the synced batch, then the free bytes left."""
        self.store.write(writes, sync=True)
        return self.free_bytes()

    async def _report_free(self, free: int | None) -> None:
        """Tell the core when the free space crossed `disk_free_bytes_min`
        (unknown free space changes nothing)."""
        if free is None:
            return
        low = free < self.config.disk_free_bytes_min
        if low != self.core.disk_is_low:
            await self.inbox_send.send(DiskSpace(low, free))

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _execute(self, action) -> None:
        kind = type(action)
        if kind is Reply:
            self._deliver(action.token, action.data, action.close)
        elif kind is StartJob:
            # The job's cancel scope exists from this moment on, so that a
            # KillJob carried out in the same batch (a CANCEL handled right
            # after the start, before the task ran) finds it: cancel wins.
            scope = self.job_scopes[action.job_id] = trio.CancelScope()
            # Its output is readable (TAIL) from this moment on, as its scope
            # is; forgotten once the core has handled its exit and the replies
            # of that batch are out (`_ForgetLiveOutput`). At most one per slot,
            # plus runs ending.
            live = self.live_outputs[(action.job_id, action.attempt)] = LiveOutput(self.config.output_bytes_max)
            self.nursery.start_soon(self._run_job, action, scope, live)
        elif kind is Send:
            self.links.send(action.peer_id, action.addr, action.message)
        elif kind is ReplyResult:
            self._deliver(action.token, read_result(self.store, action.job_id), False)
        elif kind is ReplyTail:
            self._reply_tail(action)  # executor/edge/tail.py
        elif kind is _ForgetLiveOutput:
            self.live_outputs.pop(action.key, None)
        elif kind is KillJob:
            scope = self.job_scopes.get(action.job_id)
            if scope is not None:
                scope.cancel()
        elif kind is Log:
            log.info("%s: %s", self.peer_id, action.text)
        else:
            raise TypeError(f"unknown action {action!r}")

    def _deliver(self, token, data: bytes, close: bool) -> None:
        client, slot = token
        _fill(client, slot, data, close)
