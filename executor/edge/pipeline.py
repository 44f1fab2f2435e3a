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
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from executor.core import (
    ClientRequest,
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
from executor.edge.replies import fill, flush
from executor.edge.tail import LiveOutput
from storage import layout
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


@dataclass(frozen=True, slots=True)
class _Synced:
    """The edge's own action: set `event` once the batch it rides is durable
    (a job's process record before its command runs: `Node._spawned`)."""

    event: trio.Event


def _outcome(work: Callable[[], tuple]) -> tuple[tuple, float]:
    """`work()` as ((result, None) or (None, exception), seconds): a
    StoreError stops the peer (`_durable`), and anything else too, as itself."""
    started = time.perf_counter()
    try:
        result = work(), None
    except Exception as exc:  # noqa: BLE001 -- handed to _durable, which stops the peer with it
        result = None, exc
    return result, time.perf_counter() - started


class _SyncThread:
    """The one thread that makes the committer's batches durable, one at a
    time. Woken by `start`, it takes everything pending at the moment it runs
    (`work`): what the core handed in while the thread was waking up (or
    waiting for the GIL) rides the same fsync. Lighter than `trio.to_thread`
    per batch (no thread cache, capacity limiter or per-call thread naming):
    a batch costs two wake-ups, this thread's and the event loop's
    (`run_sync_soon`, which runs `done` there)."""

    def __init__(self, work: Callable[[], tuple], done: Callable[[tuple, float], None],
                 token: trio.lowlevel.TrioToken) -> None:
        self._work, self._done, self._token = work, done, token
        self._wakeups: queue.SimpleQueue = queue.SimpleQueue()  # at most one wake-up, or the stop
        self.busy = False  # woken, and its `done` has not run yet
        threading.Thread(target=self._serve, name="peerjobs-sync", daemon=True).start()

    def start(self) -> None:
        """Take the pending batch and sync it; then `done((batch, None) or
        (None, exception), seconds)` runs on the trio thread."""
        self.busy = True
        self._wakeups.put(True)

    def stop(self) -> None:
        self._wakeups.put(None)

    def _serve(self) -> None:
        while self._wakeups.get() is not None:
            try:
                self._token.run_sync_soon(self._finish, *_outcome(self._work))
            except trio.RunFinishedError:
                return

    def _finish(self, result: tuple, seconds: float) -> None:
        self.busy = False
        self._done(result, seconds)


class CommitPipelineMixin:
    """The core loop, the committer and the actions they carry out (`Node`)."""

    def _init_committer(self) -> None:
        self._pending_writes: list = []  # the next batch
        self._pending_actions: list = []  # what waits for it
        self._pending_lock = threading.Lock()  # the pending batch is taken by the sync thread
        self._riders: list = []  # writes that ride the next batch but never start one (`_write_later`)
        self._unflushed: dict = {}  # clients given replies in this burst, in order (`_flush_replies`)
        self._commit_busy = False  # a batch is syncing, or one failed: the next waits
        self._unsynced: dict[bytes, int] = {}  # key -> its writes pending or syncing (`Reply.about`)
        self._committed = trio.lowlevel.ParkingLot()  # readers held back while the disk is behind
        self._sync_thread: _SyncThread | None = None  # made by `_committer` when the store blocks
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._sync_idle = trio.lowlevel.ParkingLot()
        self._commit_failed = trio.Event()
        self._commit_failure: BaseException | None = None

    async def _core_loop(self) -> None:
        """Feed events to the core; hand its output to the committer.

        Starting and killing jobs is carried out at once: a job that runs
        before its record is durable can at worst run for nobody (its SUBMIT
        was never acknowledged) or run again after a crash (at-least-once),
        and not waiting for the disk there keeps short jobs flowing. Everything
        that tells the outside world something waits for the committer.

        A batch is cut as soon as the inbox is empty: group commit needs no
        wait here, since everything handed in while a batch syncs, or while
        the sync thread waits to run, rides the next fsync (`_take_batch`).
        """
        core, inbox, room = self.core, self.inbox, self._client_room
        while True:
            event = await inbox.receive()
            now, wall = self.clock(), self.wall_clock()
            count = 0
            ended: list[_ForgetLiveOutput] = []
            while True:
                kind = type(event)
                if kind is ClientRequest:
                    room.release()
                elif kind is Tick:
                    self._tick_pending = False
                elif kind is JobExited:
                    ended.append(_ForgetLiveOutput((event.job_id, event.attempt)))
                core.handle(event, now, wall)
                count += 1
                if count >= self.config.commit_events_max:
                    break
                try:
                    event = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
            writes, actions = core.take()
            carry_out(writes, actions, at_once=self._execute, durably=self._commit_later)
            if ended:
                self._commit_later([], ended)
            self._flush_replies()
            # Clients already wait at commit_writes_max (_client_reader);
            # this is the last resort that keeps memory bounded.
            while len(self._pending_writes) >= 2 * self.config.commit_writes_max:
                await self._committed.park()

    def _commit_later(self, writes: list, actions: list) -> None:
        """The edge contract's durable half, pipelined: while a batch syncs,
        everything handed in waits and then goes as the next ONE batch; when
        the disk is idle, it goes at once (group commit without a wait).

        A reply `about` one job whose record has no write pending or syncing
        shows only what is durable already: it goes now, not behind the batch
        in flight (a script that WAITs for a thousand finished jobs while
        others finish waits for no fsync). The client's own replies still go
        in request order (executor/edge/sessions.py)."""
        unsynced = self._unsynced
        for key, _ in writes:
            unsynced[key] = unsynced.get(key, 0) + 1
        later = []
        for action in actions:
            if type(action) is Reply and action.about is not None and \
                    layout.key(layout.JOB, action.about) not in unsynced:
                self._execute(action)
            else:
                later.append(action)
        with self._pending_lock:  # the sync thread takes them (`_take_batch`)
            self._pending_writes += writes
            self._pending_actions += later
        if not self._commit_busy:
            self._commit_next()

    def _write_later(self, writes: list) -> None:
        """Writes nobody waits for (a hint, as a finished job's process record
        deleted): they ride the next synced batch, whenever there is one, and
        never cost an fsync of their own."""
        with self._pending_lock:
            self._riders += writes

    def _commit_next(self) -> None:
        """Nothing syncs: wake the sync thread if writes are pending (the
        event loop, and with it membership, never waits for the disk; the
        memory store is written here), else carry out the pending actions."""
        if not self._pending_writes:
            actions, self._pending_actions = self._pending_actions, []
            for action in actions:
                self._execute(action)
            return
        self._commit_busy = True
        if self._sync_thread is not None:
            self._sync_thread.start()
            return
        self._trio_token.run_sync_soon(self._durable, *_outcome(self._take_batch))

    def _take_batch(self) -> tuple[list, list, int | None]:
        """In the sync thread (or inline for the memory store): everything
        pending as ONE synced batch; (its writes, the actions that waited for
        them, the free bytes left)."""
        with self._pending_lock:
            writes, actions, riders = self._pending_writes, self._pending_actions, self._riders
            self._pending_writes, self._pending_actions, self._riders = [], [], []
        self.store.write(riders + writes, sync=True)
        return writes, actions, self.free_bytes()

    def _durable(self, result: tuple, seconds: float) -> None:
        """On the trio thread, once a batch is synced (result: ((writes,
        actions, free bytes), None)) or failed ((None, exception)): carry out
        its actions in order, then go on with what is pending.

        Fail-stop (after PostgreSQL's fsyncgate): a write or sync that fails
        leaves the log's state unknown, so the peer acknowledges nothing of
        that batch or after it (the committer stays busy for good) and
        `_committer` stops the peer with one line (`StorageFailed`); the
        restart recovers everything acknowledged before. Nothing raised here
        may reach trio's run loop: it goes to `_committer` too."""
        try:
            batch, error = result
            if error is not None and not isinstance(error, StoreError):
                raise error
            if error is not None:
                raise StorageFailed(
                    f"{self.peer_id}: stopping: a synced write failed ({error}); nothing of it was acknowledged. "
                    f"Check the disk of {self.data_dir} (space, errors in the kernel log), then restart the "
                    f"peer: it recovers every job acknowledged before") from None
            writes, actions, free = batch
            unsynced = self._unsynced
            for key, _ in writes:
                left = unsynced.pop(key) - 1
                if left:
                    unsynced[key] = left
            self.synced_batches += 1
            if self.on_commit is not None:
                self.on_commit(len(writes), seconds)
            self._committed.unpark_all()
            self._report_free(free)
            for action in actions:
                self._execute(action)
            self._commit_busy = False
            self._commit_next()
            self._flush_replies()
        except BaseException as exc:  # noqa: BLE001 -- raised again by _committer, in a task
            self._commit_busy = True  # nothing more is acknowledged
            self._commit_failure = exc
            self._commit_failed.set()
        finally:
            self._sync_idle.unpark_all()

    async def _committer(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Owns the sync thread's life: stops the peer when a batch failed
        (`_durable`), and on the way out lets a sync in flight end before the
        store is closed."""
        self._trio_token = trio.lowlevel.current_trio_token()
        if self.store.blocks:
            self._sync_thread = _SyncThread(self._take_batch, self._durable, self._trio_token)
        task_status.started()
        try:
            await self._commit_failed.wait()
            raise self._commit_failure
        finally:
            with trio.CancelScope(shield=True):
                while self._sync_thread is not None and self._sync_thread.busy:
                    await self._sync_idle.park()
            if self._sync_thread is not None:
                self._sync_thread.stop()

    def _report_free(self, free: int | None) -> None:
        """Tell the core when the free space crossed `disk_free_bytes_min`
        (unknown free space changes nothing). A full inbox drops the news:
        the next batch (or `_disk_watcher`) finds the same crossing."""
        if free is None:
            return
        low = free < self.config.disk_free_bytes_min
        if low != self.core.disk_is_low:
            try:
                self.inbox_send.send_nowait(DiskSpace(low, free))
            except trio.WouldBlock:
                pass

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
        elif kind is _Synced:
            action.event.set()
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
        fill(client, slot, data, close)
        if client.writer_idle:
            self._unflushed[client] = None

    def _flush_replies(self) -> None:
        """At the end of a burst of actions (a core loop round, a durable
        batch): each client's ready replies in one write (`flush`)."""
        clients, self._unflushed = self._unflushed, {}
        for client in clients:
            flush(client)
