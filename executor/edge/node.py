"""A real peer: the trio edge around `PeerCore`.

The edge is thin on purpose (see docs/architecture.md). Its tasks:

* the *core loop* — the only task that touches the core: it takes every event
  waiting in the inbox (up to `commit_events_max`), feeds them to the core,
  writes the core's writes in ONE synced LevelDB batch (in a worker thread, so
  that clients keep being read meanwhile and the next batch fills up: group
  commit), then carries out the actions (executor/edge/pipeline.py);
* a *ticker* that puts a `Tick` in the inbox every `tick_interval_s`;
* per client connection, a reader (lines -> commands -> inbox) and a writer
  (replies in request order, so clients may pipeline);
* per job, a runner (`executor/edge/runner.py`);
* per peer, an outbound link writer and an inbound link reader
  (`executor/edge/links.py`).

Nothing here decides anything: every decision is the core's.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import random
import signal
import time

import trio

from executor.config import Config, Security
from executor.core import (
    ClientClosed,
    ClientRequest,
    JobExited,
    PeerCore,
    StartJob,
    Tick,
)
from executor.core.cluster import Cluster
from executor.edge.connections import ConnectionsMixin
from executor.edge.links import Links
from executor.edge.pipeline import (
    CommitPipelineMixin,
    StorageFailed,  # noqa: F401 -- the peer's fatal error: its callers catch it from here
    _Synced,
)
from executor.edge.replies import Session, Slot
from executor.edge.runner import (
    kill_orphan_sessions,
    run_job,
)
from executor.edge.tail import LiveOutput, TailMixin
from storage import layout
from storage.store import LevelStore, Store

log = logging.getLogger("peerjobs")

_RECEIVE_BYTES = 65536


class Node(ConnectionsMixin, CommitPipelineMixin, TailMixin):
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
        self._client_room = trio.Semaphore(config.inbox_client_requests_max)  # sessions.py `_to_core`
        self.job_scopes: dict[str, trio.CancelScope] = {}
        self.live_outputs: dict[tuple[str, int], LiveOutput] = {}  # TAIL: executor/edge/tail.py
        self.clients = 0  # client connections (client_connections_max)
        self.peer_links = 0  # inbound peer links (peer_links_max)
        self.connections = 0  # every open inbound connection, of either kind
        self.draining = 0  # hung-up clients still owed replies (client_draining_max)
        self._client_numbers = itertools.count(1)
        self._tick_pending = False
        self._init_committer()  # executor/edge/pipeline.py
        self.links = None
        self.listening = trio.Event()
        self.bound_port: int | None = None
        self.http = http  # (host, port) of the dashboard and /metrics (executor/edge/http.py), or None
        self.http_port: int | None = None
        self.synced_batches = 0  # STATS synced_batches: fsyncs of the committer (executor/edge/pipeline.py)
        self.on_commit = None  # set by executor/edge/http.py: called with (writes, seconds) per synced batch

    def _kill_orphans(self) -> None:
        """Kill what a previous life of this peer left running (it was killed
        with -9 and its jobs ran on), before any job runs again here: every
        process of every session recorded under `r/` (executor/edge/runner.py says
        how a session is found and pinned against pid reuse)."""
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

    def statistics(self) -> dict[str, int]:
        """Every counter of this peer: jobs, queue, links, membership, clients."""
        out = self.core.statistics()
        out["clients"] = self.clients
        out["synced_batches"] = self.synced_batches
        out.update({f"link_{k}": v for k, v in sorted(self.links.stats.items())})
        return out

    async def ask(self, command) -> bytes:
        """Answer one typed, already-validated command (executor/edge/http.py)
        exactly as a client would be answered, with the reply's bytes.

        The HTTP edge calls this instead of speaking the text protocol to its
        own port, so that no string from an HTTP request is ever parsed as a
        protocol line. The caller bounds the wait (a cancelled ask tells the
        core the "connection" is gone, as a client hanging up would)."""
        client = Session(next(self._client_numbers))
        slot = Slot()
        client.pending.append(slot)
        try:
            await self._to_core(ClientRequest((client, slot), command))
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
        durable before its command runs, so that no crash leaves a job process
        the next life cannot find (docs/architecture.md, crash points). It
        rides the committer's next synced batch, with every other start and
        whatever else is pending; a failed sync stops the peer, and this job
        is killed before its command ran."""
        durable = trio.Event()
        self._commit_later([(layout.key(layout.PID, job_id), layout.encode(record))], [_Synced(durable)])
        await durable.wait()

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
                stats = self.core.statistics()
                jobs, held, outbox = stats["records"], stats["queued"], stats["outbox"]
                self.snapshot = None  # recovered: let it go
                log.info(
                    "%s: listening on %s (incarnation %d, slots %d; recovered %d jobs, %d held, %d results unsent)",
                    self.peer_id, self.addr, self.incarnation, self.slots, jobs, held, outbox,
                )
                await nursery.start(self._committer)
                nursery.start_soon(self._core_loop)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._disk_watcher)
                if listeners:
                    nursery.start_soon(trio.serve_listeners, self.serve, listeners)
                if self.http is not None:
                    from executor.edge.http import serve_http

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
            if self.core.disk_is_low:
                free = await trio.to_thread.run_sync(self.free_bytes) if self.store.blocks else self.free_bytes()
                self._report_free(free)

    async def _run_job(self, start: StartJob, scope: trio.CancelScope, live: LiveOutput) -> None:
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
                    live=live,
                    late_s=self.clock() - start.started_at if start.started_at is not None else 0.0,
                )
            finally:
                if self.job_scopes.get(start.job_id) is scope:
                    del self.job_scopes[start.job_id]
                if start.spec.kind == "sh":
                    # A hint (the next life checks a record's session before it
                    # kills): it rides the batch with the job's exit.
                    self._write_later([(layout.key(layout.PID, start.job_id), None)])
        if scope.cancelled_caught:
            exited = JobExited(start.job_id, start.attempt, None, "cancelled")
        log.debug("%s: job %s attempt %d exited: code=%s reason=%s",
                  self.peer_id, start.job_id, start.attempt, exited.exit_code, exited.reason)
        live.end(exited)  # TAIL -f followers send their last frame
        await self.inbox_send.send(exited)


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
