"""A real peer: the trio edge around `PeerCore`.

The edge is thin on purpose (see docs/architecture.md). Its tasks:

* the *core loop* — the only task that touches the core: it takes every event
  waiting in the inbox (up to `commit_events_max`), feeds them to the core,
  writes the core's writes in ONE synced LevelDB batch (in a worker thread, so
  that clients keep being read meanwhile and the next batch fills up: group
  commit), then carries out the actions;
* a *ticker* that puts a `Tick` in the inbox every `tick_interval_s`;
* per client connection, a reader (lines -> commands -> inbox) and a writer
  (replies in request order, so clients may pipeline);
* per job, a runner (`executor/runner.py`);
* per peer, an outbound link writer and an inbound link reader
  (`executor/links.py`).

Nothing here decides anything: every decision is the core's.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hmac
import ipaddress
import itertools
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field

import trio

from executor import protocol
from executor.config import Config, Security
from executor.core import (
    ClientClosed,
    DiskSpace,
    ClientRequest,
    JobExited,
    KillJob,
    Log,
    PeerCore,
    Reply,
    ReplyResult,
    Send,
    StartJob,
    Tick,
    carry_out,
    read_result,
)
from executor.cluster import Cluster
from executor.links import Links
from executor.runner import DurableRecords, RecordWriteFailed, kill_orphan_sessions, run_job
from gossip.wire import HELLO_LINE_BYTES_MAX, HELLO_PREFIX
from storage import layout
from storage.store import LevelStore, Store, StoreError

log = logging.getLogger("peerjobs")

_RECEIVE_BYTES = 65536


@dataclass(eq=False)
class _Slot:
    """One reply a client is owed, in request order."""

    data: bytes | None = None
    close: bool = False


@dataclass(eq=False)
class _Client:
    number: int
    pending: collections.deque = field(default_factory=collections.deque)
    ready: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    budget: trio.Semaphore | None = None
    closed: bool = False
    authed: bool = True
    holds_slot: bool = False  # counts against client_connections_max (until EOF)
    draining: int = 0  # 1 while it counts against client_draining_max
    owed_bytes: int = 0  # reply bytes ready and not yet sent (client_reply_bytes_max)


class StorageFailed(Exception):
    """A synced write failed: the peer stops (fail-stop); one line says why."""


class Node:
    def __init__(
        self,
        *,
        data_dir: str,
        listen: tuple[str, int],
        slots: int,
        name: str,
        config: Config,
        seeds: list[str] | None = None,
        store: Store | None = None,
        clock=time.monotonic,
        wall_clock=time.time,
        free_bytes=None,
        connect=None,
        http: tuple[str, int] | None = None,
        security: Security | None = None,
    ) -> None:
        """`clock` (monotonic: every deadline runs on it), `wall_clock` (for
        what records show) and `connect` (how to open a link to "host:port")
        are parameters so that tests can run peers on trio's virtual clock over
        in-memory streams. `security`: secret, token, allow-list, TLS
        (docs/security.md); the default trusts the network."""
        self.security = security if security is not None else Security()
        self.edge_stats: collections.Counter[str] = collections.Counter()  # STATS link_*: links and connections
        self._per_source: collections.Counter[str] = collections.Counter()
        self.data_dir = data_dir
        self.clock = clock
        self.wall_clock = wall_clock
        # Free bytes of the data directory's file system, or None if unknown.
        self.free_bytes = free_bytes if free_bytes is not None else self._free_bytes
        self.connect = connect
        self.host, self.port = listen
        self.config = config
        self.slots = slots
        self.seeds = seeds or []
        self.store = store if store is not None else LevelStore(data_dir)
        snapshot = layout.start(self.store, name)
        self.peer_id = snapshot.peer_id
        self.incarnation = snapshot.incarnation
        self._kill_orphans()
        self.workdir = os.path.join(data_dir, "work")
        os.makedirs(self.workdir, exist_ok=True)
        self.snapshot = snapshot
        self.addr = f"{self.host}:{self.port}"
        self.core: PeerCore | None = None  # made in run(), once the port is bound
        self.inbox_send, self.inbox = trio.open_memory_channel(config.inbox_events_max)
        self.job_scopes: dict[str, trio.CancelScope] = {}
        self.clients = 0  # client connections (client_connections_max)
        self.peer_links = 0  # inbound peer links (peer_links_max)
        self.connections = 0  # every open inbound connection, of either kind
        self.draining = 0  # hung-up clients still owed replies (client_draining_max)
        self._client_numbers = itertools.count(1)
        self._tick_pending = False
        self._pending_writes: list = []
        self._pending_actions: list = []
        self._doorbell, doorbell_recv = trio.open_memory_channel(1)
        self._doorbell_recv = doorbell_recv
        self._committed = trio.lowlevel.ParkingLot()
        self.links = None
        self.listening = trio.Event()
        self.bound_port: int | None = None
        self.http = http  # (host, port) of the dashboard and /metrics (executor/http.py), or None
        self.http_port: int | None = None
        self.on_commit = None  # set by executor/http.py: called with (writes, seconds) per synced batch

    def _kill_orphans(self) -> None:
        """Kill what a previous life of this peer left running (it was killed
        with -9 and its jobs ran on), before any job runs again here: every
        process of every session recorded under `r/` (executor/runner.py says
        how a session is found and pinned against pid reuse). Also sets up
        this life's synced job records (`_spawned`)."""
        stale = list(self.store.scan(layout.PID))
        records = []
        for key, value in stale:
            record = layout.decode(value, "job process record")
            if isinstance(record, dict):
                records.append(record)
            # else: a bare pid written by an older version; it cannot be told
            # from a reused pid, so it is left alone.
        for sid in kill_orphan_sessions(records):
            log.info("%s: killed the orphaned job processes (session %d) of the previous life", self.peer_id, sid)
        self.store.write([(key, None) for key, _ in stale], sync=False)
        self._job_records = DurableRecords(self.store, in_thread=self.store.blocks)

    def statistics(self) -> dict[str, int]:
        """Every counter of this peer: jobs, queue, links, membership, clients."""
        core = self.core
        out = {f"jobs_{k}": v for k, v in dataclasses.asdict(core.counters).items()}
        out.update(issued=core.next_seq - 1, queued=len(core.queue), running=len(core.running), slots=self.slots,
                   records=len(core.records), outbox=len(core.outbox), lends=len(core.lends),
                   clients=self.clients, incarnation=core.cluster.membership.incarnation)
        out.update({f"link_{k}": v for k, v in sorted(self.links.stats.items())})
        out.update({f"gossip_{k}": v for k, v in sorted(core.cluster.membership.statistics().items())})
        return out

    async def ask(self, command) -> bytes:
        """Answer one typed, already-validated command (executor/http.py)
        exactly as a client would be answered, with the reply's bytes.

        The HTTP edge calls this instead of speaking the text protocol to its
        own port, so that no string from an HTTP request is ever parsed as a
        protocol line. The caller bounds the wait (a cancelled ask tells the
        core the "connection" is gone, as a client hanging up would)."""
        client = _Client(next(self._client_numbers))
        slot = _Slot()
        client.pending.append(slot)
        try:
            await self.inbox_send.send(ClientRequest((client, slot), command))
            while slot.data is None:
                await client.ready.park()
            return slot.data
        finally:
            if slot.data is None:
                try:
                    self.inbox_send.send_nowait(ClientClosed(client))
                except (trio.WouldBlock, trio.ClosedResourceError):
                    pass  # a full inbox: a WAIT left behind still ends at its own timeout

    async def _spawned(self, job_id: str, record: dict) -> None:
        """The job's session leader is spawned and waits: make its record
        durable (synced, group-committed with other starts) before its
        command runs, so that no crash leaves a job process the next life
        cannot find (docs/architecture.md, crash points)."""
        try:
            await self._job_records.write([(layout.key(layout.PID, job_id), layout.encode(record))])
        except RecordWriteFailed as exc:
            raise StorageFailed(
                f"{self.peer_id}: stopping: a synced write failed ({exc}) before job {job_id} ran; nothing of it "
                f"ran. Check the disk of {self.data_dir} (space, errors in the kernel log), then restart the "
                f"peer: it recovers every job acknowledged before") from None

    # ------------------------------------------------------------------

    async def run(self, *, listen: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. With `listen=False` no port is opened and
        connections are handed to `serve` by the caller (tests)."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                listeners = []
                if listen:
                    listeners = await trio.open_tcp_listeners(self.port, host=self.host)
                    self.bound_port = listeners[0].socket.getsockname()[1]
                    self.addr = f"{self.host}:{self.bound_port}"
                now = self.clock()
                snap = self.snapshot
                cluster = Cluster(self.peer_id, self.addr, self.incarnation, self.config, random.Random(), now)
                self.core = PeerCore(self.peer_id, self.config, self.slots, random.Random(), snap, now,
                                     cluster=cluster, wall=self.wall_clock())
                self.links = Links(self, nursery, self.connect)
                self.core.handle_join(self.seeds, snap.peers, now)
                core = self.core
                jobs, held, outbox = len(core.records), len(core.queue), len(core.outbox)
                self.snapshot = None  # recovered: let it go
                log.info(
                    "%s: listening on %s (incarnation %d, slots %d; recovered %d jobs, %d held, %d results unsent)",
                    self.peer_id, self.addr, self.incarnation, self.slots, jobs, held, outbox,
                )
                nursery.start_soon(self._committer, self._doorbell_recv)
                nursery.start_soon(self._core_loop)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._disk_watcher)
                if listeners:
                    nursery.start_soon(trio.serve_listeners, self.serve, listeners)
                if self.http is not None:
                    from executor.http import serve_http

                    await nursery.start(serve_http, self)
                self.listening.set()
                task_status.started(self.bound_port)
        finally:
            self.store.close()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_interval_s)
            if not self._tick_pending:
                self._tick_pending = True
                await self.inbox_send.send(Tick())

    async def _disk_watcher(self) -> None:
        """While the disk is low, look again every `disk_check_interval_s`:
        a refused SUBMIT writes nothing, so no commit would ever notice that
        space came back. SUBMIT works again without a restart."""
        while True:
            await trio.sleep(self.config.disk_check_interval_s)
            if self.core.disk_low:
                free = await trio.to_thread.run_sync(self.free_bytes) if self.store.blocks else self.free_bytes()
                if free is not None and free >= self.config.disk_free_bytes_min:
                    await self.inbox_send.send(DiskSpace(False, free))

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
            while True:
                if type(event) is Tick:
                    self._tick_pending = False
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
                low = free is not None and free < self.config.disk_free_bytes_min
                if low != self.core.disk_low:
                    await self.inbox_send.send(DiskSpace(low, free))
            for action in actions:
                self._execute(action)

    def _write(self, writes) -> int | None:
        """In a worker thread: the synced batch, then the free bytes left."""
        self.store.write(writes, sync=True)
        return self.free_bytes()

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
            self.nursery.start_soon(self._run_job, action, scope)
        elif kind is Send:
            self.links.send(action.peer_id, action.addr, action.message)
        elif kind is ReplyResult:
            self._deliver(action.token, read_result(self.store, action.job_id), False)
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

    async def _run_job(self, start: StartJob, scope: trio.CancelScope) -> None:
        log.debug("%s: job %s attempt %d starting", self.peer_id, start.job_id, start.attempt)
        with scope:
            try:
                exited = await run_job(
                    start,
                    peer_id=self.peer_id,
                    workdir=self.workdir,
                    output_bytes_max=self.config.output_bytes_max,
                    kill_grace_s=self.config.kill_grace_s,
                    spawned=functools.partial(self._spawned, start.job_id),
                )
            finally:
                if self.job_scopes.get(start.job_id) is scope:
                    del self.job_scopes[start.job_id]
                if start.spec.kind == "sh":
                    try:
                        self.store.write([(layout.key(layout.PID, start.job_id), None)], sync=False)
                    except StoreError:
                        pass  # a hint only (the next life checks it); a failing disk stops the committer
        if scope.cancelled_caught:
            exited = JobExited(start.job_id, start.attempt, None, "cancelled")
        log.debug("%s: job %s attempt %d exited: code=%s reason=%s",
                  self.peer_id, start.job_id, start.attempt, exited.exit_code, exited.reason)
        await self.inbox_send.send(exited)

    # ------------------------------------------------------------------
    # Connections: a peer announces itself with a hello line; anything
    # else is a client speaking the text protocol. Nothing a remote sends
    # may raise out of `serve`: disconnects end the connection quietly, and
    # anything else is logged and counted as `link_handler_errors` (a bug).

    def client_options(self) -> dict:
        """What a client of this very peer needs (executor/http.py): token, TLS."""
        ctx = None
        if self.security.server_ssl is not None:
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # our own port, on the address we bound
        return {"token": self.security.token.decode() if self.security.token else None, "ssl_context": ctx}

    async def serve(self, stream: trio.abc.Stream) -> None:
        """One inbound connection, a client or a peer.

        Budgets: every connection counts against the sum of both budgets
        until its first line says what it is; then a client takes one of
        `client_connections_max` slots and a peer link one of `peer_links_max`
        (`_serve_connection`), so neither kind can lock the other out."""
        cfg = self.config
        source = _source_of(stream)
        limited = source is not None and not _is_loopback(source)
        async with _closing(stream):
            if self.connections >= cfg.client_connections_max + cfg.peer_links_max:
                self.edge_stats["refused_connections"] += 1
                await _say(stream, protocol.err(
                    "too-many-connections", f"this peer serves at most {cfg.client_connections_max} connections"))
                return
            if limited and self._per_source[source] >= cfg.client_connections_per_source_max:
                self.edge_stats["refused_per_source"] += 1
                await _say(stream, protocol.err(
                    "too-many-connections",
                    f"this peer serves at most {cfg.client_connections_per_source_max} connections per address"))
                return
            self.connections += 1
            if limited:
                self._per_source[source] += 1
            try:
                if self.security.server_ssl is not None:
                    stream = trio.SSLStream(stream, self.security.server_ssl, server_side=True)
                    with trio.move_on_after(cfg.hello_timeout_s) as scope:
                        await stream.do_handshake()
                    if scope.cancelled_caught:
                        self.edge_stats["tls_timeout"] += 1
                        return
                await self._serve_connection(stream, source or "?")
            except Exception as exc:  # noqa: BLE001 -- the one place a connection's failure is contained
                if _is_disconnect(exc):
                    self.edge_stats["disconnects"] += 1
                else:
                    self.edge_stats["handler_errors"] += 1
                    log.exception("%s: connection from %s failed (a bug; the peer goes on)", self.peer_id, source)
            finally:
                self.connections -= 1
                if limited:
                    self._per_source[source] -= 1
                    if not self._per_source[source]:
                        del self._per_source[source]

    async def _serve_connection(self, stream, source: str) -> None:
        cfg = self.config
        token = self.security.token
        first = b""
        # Nothing yet: an idle client (or, with a token, an unauthenticated
        # one) may wait this long. Once bytes come, the first line must be
        # complete within slow_sender_s, a peer's handshake within hello_timeout_s.
        deadline = trio.current_time() + (cfg.hello_timeout_s if token is not None else cfg.client_idle_s)
        hello_deadline = None
        while b"\n" not in first and len(first) < HELLO_LINE_BYTES_MAX:
            with trio.move_on_at(deadline) as scope:
                chunk = await stream.receive_some(_RECEIVE_BYTES)
            if scope.cancelled_caught:
                if first:
                    self.edge_stats["slow_sender"] += 1
                    await _say(stream, protocol.err("slow-sender", f"line not completed within {cfg.slow_sender_s:g} s; closing"))
                elif token is not None:
                    self.edge_stats["client_auth_refused"] += 1
                    await _say(stream, protocol.err("auth-required", "send AUTH <token> first; closing"))
                else:
                    await _say(stream, protocol.err("idle-timeout", f"no request for {cfg.client_idle_s:g} s; closing"))
                return
            if not chunk:
                return
            if not first:
                now = trio.current_time()
                hello_deadline = now + cfg.hello_timeout_s
                deadline = min(deadline, now + cfg.slow_sender_s)
            first += chunk
            if not _may_be_hello(first):
                break
        if first.startswith(HELLO_PREFIX):
            if b"\n" not in first:
                self.edge_stats["bad_hello"] += 1
                await _say(stream, protocol.err("protocol-error", "hello line too long"))
                return
            if self.peer_links >= cfg.peer_links_max:
                self.edge_stats["refused_links"] += 1
                await _say(stream, protocol.err(
                    "too-many-connections", f"this peer serves at most {cfg.peer_links_max} peer links"))
                return
            self.peer_links += 1
            try:
                await self.links.serve_inbound(stream, first, source, hello_deadline)
            finally:
                self.peer_links -= 1
            return
        if self.clients >= cfg.client_connections_max:
            self.edge_stats["refused_connections"] += 1
            await _say(stream, protocol.err(
                "too-many-connections", f"this peer serves at most {cfg.client_connections_max} connections"))
            return
        await self._serve_client(stream, first)

    async def _serve_client(self, stream, first: bytes) -> None:
        client = _Client(next(self._client_numbers), authed=self.security.token is None)
        self.clients += 1
        client.holds_slot = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._client_writer, stream, client, nursery.cancel_scope)
                await self._client_reader(stream, client, first)
                # The reader ended (EOF or QUIT): let the writer flush what is owed.
                client.closed = True
                client.ready.unpark_all()
        finally:
            if client.holds_slot:
                self.clients -= 1
            self.draining -= client.draining
            with trio.CancelScope(shield=True):
                await self.inbox_send.send(ClientClosed(client))

    def _hung_up(self, client: _Client) -> bool:
        """The client sent EOF: it asks nothing more, so its connection slot
        is free at once. Replies it is still owed (a WAIT) are written while
        it stays under `client_draining_max`; False: close it now instead."""
        if client.holds_slot:
            client.holds_slot = False
            self.clients -= 1
            if client.pending:
                if self.draining >= self.config.client_draining_max:
                    self.edge_stats["draining_refused"] += 1
                    return False
                client.draining = 1
                self.draining += 1
        return True

    def _edge_reply(self, client: _Client, line: bytes) -> tuple[bytes, bool] | None:
        """Requests answered at the edge, before the core: AUTH, and every
        line of a client that has not authenticated. (reply, close) or None."""
        token = self.security.token
        is_auth = line[:5].upper() == b"AUTH " or line.strip().upper() == b"AUTH"
        if client.authed:
            if is_auth:
                return protocol.ok("authenticated" if token is not None else "no token required"), False
            return None
        if not is_auth:
            self.edge_stats["client_auth_refused"] += 1
            return protocol.err("auth-required", "send AUTH <token> first; closing"), True
        given = line[5:].strip()
        if hmac.compare_digest(given, token):
            client.authed = True
            self.edge_stats["client_auth_ok"] += 1
            return protocol.ok("authenticated"), False
        self.edge_stats["client_auth_refused"] += 1
        log.warning("%s: a client gave a wrong token; closed", self.peer_id)
        return protocol.err("auth-failed", "wrong token; closing"), True

    async def _client_reader(self, stream, client: _Client, first: bytes) -> None:
        cfg = self.config
        allow = self.security.allow
        splitter = protocol.LineSplitter(cfg.line_bytes_max)
        budget = trio.Semaphore(cfg.client_pipeline_max)
        client.budget = budget
        data = first
        partial_since = None
        eof = finished = False
        backlog = bytearray()  # bytes read while a WAIT was pending, not yet parsed
        while True:
            lines = splitter.feed(data)
            if eof:
                # Every byte is in: a last line without a newline is
                # answered like any other.
                lines += splitter.finish()
                finished = True
            for line in lines:
                await budget.acquire()
                while client.owed_bytes > cfg.client_reply_bytes_max:
                    await client.ready.park()  # the client does not read its replies: stop reading requests
                slot = _Slot()
                client.pending.append(slot)
                if line is protocol.LineSplitter.TOO_LONG:
                    if not client.authed:
                        _fill(client, slot, protocol.err("auth-required", "send AUTH <token> first; closing"), True)
                        return
                    _fill(client, slot, protocol.err("line-too-long", f"line longer than {cfg.line_bytes_max} bytes; dropped"))
                    continue
                edge = self._edge_reply(client, line)
                if edge is not None:
                    _fill(client, slot, *edge)
                    if edge[1]:
                        return
                    continue
                try:
                    command = protocol.parse_command(
                        line,
                        command_bytes_max=cfg.command_bytes_max,
                        timeout_max_s=cfg.job_timeout_max_s,
                        wait_max_s=cfg.wait_max_s,
                        list_max=cfg.list_max,
                    )
                except protocol.ClientError as exc:
                    _fill(client, slot, exc.reply())
                    continue
                if type(command) is protocol.Stats:
                    # Counters are read, never changed: no need to go through the core.
                    _fill(client, slot, protocol.lines_reply("stats", [f"{k}={v}" for k, v in self.statistics().items()]))
                    continue
                if (allow is not None and type(command) is protocol.Submit and command.spec.kind == "sh"
                        and not allow.allows(command.spec.command)):
                    self.edge_stats["submit_not_allowed"] += 1
                    _fill(client, slot, protocol.err("not-allowed", "this peer runs only the commands on its allow-list"))
                    continue
                while len(self._pending_writes) >= cfg.commit_writes_max:
                    await self._committed.park()  # backpressure: the disk is behind
                await self.inbox_send.send(ClientRequest((client, slot), command))
                if type(command) is protocol.Quit:
                    return
                if type(command) is protocol.Wait:
                    # Commands after a WAIT see the world after it, as a
                    # script piped into nc expects; the reply order alone
                    # would not give that. Meanwhile the client is still
                    # read (into the backlog, unparsed), so that a hang-up
                    # frees its connection slot at once.
                    # (Not under TLS: a cancelled read may leave an SSLStream
                    # broken, so a TLS client's hang-up shows after its WAIT.)
                    watch = not eof and not isinstance(stream, trio.SSLStream)
                    if watch and await self._read_while_waiting(stream, client, slot, backlog):
                        eof = True
                        if not self._hung_up(client):
                            return
                    while slot.data is None:
                        await client.ready.park()
            if backlog or (eof and not finished):
                data = bytes(backlog)
                backlog.clear()
                continue
            if eof:
                return
            now = trio.current_time()
            if splitter.pending_bytes:
                partial_since = partial_since if partial_since is not None else now
            else:
                partial_since = None
            idle_at = now + cfg.client_idle_s
            slow_at = partial_since + cfg.slow_sender_s if partial_since is not None else math.inf
            data = b""
            with trio.move_on_at(min(idle_at, slow_at)) as waited:
                data = await stream.receive_some(_RECEIVE_BYTES)
            if waited.cancelled_caught:
                if slow_at <= idle_at:
                    self.edge_stats["slow_sender"] += 1
                    message = protocol.err("slow-sender", f"line not completed within {cfg.slow_sender_s:g} s; closing")
                elif client.pending:
                    continue  # a WAIT is outstanding: the client is not idle
                else:
                    message = protocol.err("idle-timeout", f"no request for {cfg.client_idle_s:g} s; closing")
                slot = _Slot()
                client.pending.append(slot)
                _fill(client, slot, message, True)
                return
            if not data:
                eof = True
                if not self._hung_up(client):
                    return

    async def _read_while_waiting(self, stream, client: _Client, slot: _Slot, backlog: bytearray) -> bool:
        """Read the client until `slot` (its WAIT) is answered, EOF (True),
        or `line_bytes_max` bytes wait in `backlog` (then it is left unread:
        backpressure, as for any client that sends faster than it is served)."""
        eof = False
        async with trio.open_nursery() as nursery:

            async def answered() -> None:
                while slot.data is None:
                    await client.ready.park()
                nursery.cancel_scope.cancel()

            nursery.start_soon(answered)
            while len(backlog) < self.config.line_bytes_max:
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    eof = True
                    break
                backlog += data
            nursery.cancel_scope.cancel()
        return eof

    async def _client_writer(self, stream, client: _Client, scope: trio.CancelScope) -> None:
        pending = client.pending
        try:
            while True:
                while not (pending and pending[0].data is not None):
                    if client.closed and not pending:
                        return
                    await client.ready.park()
                out = []
                close = False
                while pending and pending[0].data is not None:
                    slot = pending.popleft()
                    out.append(slot.data)
                    if client.budget is not None:
                        client.budget.release()
                    if slot.close:
                        close = True
                        break
                data = b"".join(out)
                with trio.fail_after(self.config.slow_receiver_s):
                    await stream.send_all(data)
                client.owed_bytes -= len(data)
                client.ready.unpark_all()
                if close:
                    scope.cancel()
                    return
        except trio.TooSlowError:
            self.edge_stats["slow_receiver"] += 1
            scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()


def _fill(client: _Client, slot: _Slot, data: bytes, close: bool = False) -> None:
    slot.data = data
    slot.close = close
    client.owed_bytes += len(data)
    client.ready.unpark_all()


def _source_of(stream) -> str | None:
    """The remote IP address of a TCP connection; None for other streams."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        name = sock.getpeername()
    except OSError:
        return None
    return name[0] if isinstance(name, tuple) else None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_disconnect(exc: BaseException) -> bool:
    """The remote went away (reset, TLS failure, closed): not a bug."""
    kinds = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, kinds)


class _closing:
    """`async with stream` that never raises from closing a broken stream."""

    def __init__(self, stream) -> None:
        self.stream = stream

    async def __aenter__(self):
        return self.stream

    async def __aexit__(self, *exc) -> None:
        try:
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _say(stream, data: bytes) -> None:
    """Best effort: one last reply before closing; bounded, never raises."""
    with trio.move_on_after(1.0):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _may_be_hello(first: bytes) -> bool:
    n = min(len(first), len(HELLO_PREFIX))
    return first[:n] == HELLO_PREFIX[:n]


async def serve_forever(node: Node) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it cleanly."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("%s: %s received; stopping (running jobs will run again after restart)",
                             node.peer_id, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
