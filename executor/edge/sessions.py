"""A client session: the text protocol over one connection, between the
socket and the core (a mixin of `executor.edge.node.Node`). A reader turns lines
into commands for the inbox (answering at the edge what needs no core: parse
errors, AUTH, STATS, the allow-list), a writer sends replies in request
order (executor/edge/replies.py), so clients may pipeline. Bounds:
`client_pipeline_max` requests in flight, `client_reply_bytes_max` reply
bytes owed, `slow_sender_s`, `client_idle_s`, `slow_receiver_s`; a hang-up
frees the connection slot at once (`client_draining_max`)."""

from __future__ import annotations

import hmac
import logging
import math
from dataclasses import dataclass, field

import trio

from executor.core import (
    ClientClosed,
    ClientRequest,
    protocol,
)
from executor.core.protocol import ErrorCode
from executor.edge.replies import Session, Slot, fill, flush, write_replies
from storage import layout

log = logging.getLogger("peerjobs")

_RECEIVE_BYTES = 65536
# How long a WAIT (or TAIL -f) is waited for before its client is read for a
# hang-up meanwhile (`_read_while_waiting`): a hang-up shows this much later,
# and a WAIT answered within it costs no reader task.
_UNWATCHED_WAIT_S = 0.005


@dataclass(eq=False)
class _Reading:
    """Where a client's reader is: its stream, its line splitter, bytes read
    during a WAIT and not parsed yet, EOF seen, and since when a line has
    been arriving (the slow-sender clock)."""

    stream: object
    splitter: protocol.LineSplitter
    backlog: bytearray = field(default_factory=bytearray)
    eof: bool = False
    finished: bool = False
    partial_since: float | None = None


class SessionsMixin:
    async def _serve_client(self, stream, first: bytes) -> None:
        client = Session(next(self._client_numbers), authed=self.security.token is None)
        if type(stream) is trio.SocketStream:  # not TLS: its bytes are the replies' own
            client.fd = stream.socket.fileno()
        self.clients += 1
        client.holds_slot = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_replies, stream, client, nursery.cancel_scope,
                                   self.config.slow_receiver_s, self.edge_stats)
                await self._client_reader(stream, client, first)
                # The reader ended (EOF or QUIT): let the writer flush what is owed.
                client.closed = True
                client.ready.unpark_all()
        finally:
            client.gone = True
            if client.holds_slot:
                self.clients -= 1
            self.draining -= client.draining
            with trio.CancelScope(shield=True):
                await self.inbox_send.send(ClientClosed(client))

    def _hung_up(self, client: Session) -> bool:
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

    def _edge_reply(self, client: Session, line: bytes) -> tuple[bytes, bool] | None:
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
            return protocol.err(ErrorCode.AUTH_REQUIRED, "send AUTH <token> first; closing"), True
        given = line[5:].strip()
        if hmac.compare_digest(given, token):
            client.authed = True
            self.edge_stats["client_auth_ok"] += 1
            return protocol.ok("authenticated"), False
        self.edge_stats["client_auth_refused"] += 1
        log.warning("%s: a client gave a wrong token; closed", self.peer_id)
        return protocol.err(ErrorCode.AUTH_FAILED, "wrong token; closing"), True

    async def _client_reader(self, stream, client: Session, first: bytes) -> None:
        """Lines -> commands -> the inbox, until EOF, QUIT or a closing error.
        A last line without a newline is answered like any other."""
        reading = _Reading(stream, protocol.LineSplitter(self.config.line_bytes_max))
        client.budget = trio.Semaphore(self.config.client_pipeline_max)
        data = first
        while True:
            lines = reading.splitter.feed(data)
            if reading.eof:
                lines += reading.splitter.finish()  # every byte is in
                reading.finished = True
            for line in lines:
                if not await self._take_line(reading, client, line):
                    return
            if reading.backlog or (reading.eof and not reading.finished):
                data = bytes(reading.backlog)
                reading.backlog.clear()
                continue
            if reading.eof:
                return
            flush(client)  # replies the edge gave (a finished job's WAIT): out before the next read
            data = await self._receive_more(reading, client)
            if data is None:
                return
            if not data:
                reading.eof = True
                if not self._hung_up(client):
                    return

    async def _take_line(self, reading: _Reading, client: Session, line) -> bool:
        """One line: answered at the edge, or sent to the core. False: stop reading."""
        cfg = self.config
        # The fast paths take no trip through the scheduler: a client that
        # pipelines stops here only at `client_pipeline_max` requests owed
        # (the budget, released by its writer) or a full inbox, which yield.
        try:
            client.budget.acquire_nowait()
        except trio.WouldBlock:
            await client.budget.acquire()
        while client.owed_bytes > cfg.client_reply_bytes_max:
            await client.ready.park()  # the client does not read its replies: stop reading requests
        slot = Slot()
        client.pending.append(slot)
        if line is protocol.LineSplitter.TOO_LONG:
            if not client.authed:
                fill(client, slot, protocol.err(ErrorCode.AUTH_REQUIRED, "send AUTH <token> first; closing"), True)
                return False
            fill(client, slot, protocol.err(ErrorCode.LINE_TOO_LONG, f"line longer than {cfg.line_bytes_max} bytes; dropped"))
            return True
        edge = self._edge_reply(client, line)
        if edge is None:
            edge = self._edge_command(line)
        if isinstance(edge, tuple):
            fill(client, slot, *edge)
            return not edge[1]
        command = edge
        kind = type(command)
        if (kind is protocol.Wait or kind is protocol.Status) and self._answer_finished(client, slot, command.job_id):
            return True
        while len(self._pending_writes) >= cfg.commit_writes_max:
            await self._committed.park()  # backpressure: the disk is behind
        await self._to_core(ClientRequest((client, slot), command))
        if type(command) is protocol.Quit:
            return False
        follow = type(command) is protocol.Tail and command.follow
        if type(command) is protocol.Wait or follow:
            # Commands after a WAIT see the world after it, as a script piped
            # into nc expects; the reply order alone would not give that.
            # Meanwhile the client is still read (into the backlog, unparsed),
            # so that a hang-up frees its connection slot at once. (Not under
            # TLS: a cancelled read may leave an SSLStream broken, so a TLS
            # client's hang-up shows after its WAIT.) A TAIL -f is held the
            # same way, and a hang-up ends its stream (the follower sends a
            # last frame within `tail_poll_s`): nobody is there to read it.
            # Most WAITs of a script are answered at once (the job is final):
            # those get their answer before a reader is set up for them.
            with trio.move_on_after(_UNWATCHED_WAIT_S):
                while not slot.answered:
                    await client.ready.park()
            watch = not slot.answered and not reading.eof and not isinstance(reading.stream, trio.SSLStream)
            if watch and await self._read_while_waiting(reading.stream, client, slot, reading.backlog):
                reading.eof = True
                slot.stop = follow
                if not self._hung_up(client):
                    return False
            while not slot.answered:
                await client.ready.park()
        return True

    def _answer_finished(self, client: Session, slot: Slot, job_id: str) -> bool:
        """STATUS or WAIT of a job of ours that is final and whose record is
        durable: answered here, from the core's query (`finished_status`),
        without a trip through the inbox; a script that WAITs for a thousand
        finished jobs gets its replies a read at a time. Its reply still
        leaves after every earlier one of the client's (request order)."""
        if layout.key(layout.JOB, job_id) in self._unsynced:
            return False
        line = self.core.finished_status(job_id)
        if line is None:
            return False
        fill(client, slot, line)
        return True

    async def _to_core(self, request: ClientRequest) -> None:
        """A client request into the inbox, behind at most
        `inbox_client_requests_max` others not handled yet (the core loop
        gives the room back as it handles each): peer messages share the
        inbox, and a probe's ack must not wait behind a flood of pipelined
        requests. No trip through the scheduler while there is room."""
        room = self._client_room
        try:
            room.acquire_nowait()
        except trio.WouldBlock:
            await room.acquire()
        try:
            self.inbox_send.send_nowait(request)
        except trio.WouldBlock:
            try:
                await self.inbox_send.send(request)
            except BaseException:
                room.release()
                raise

    def _edge_command(self, line: bytes):
        """The parsed command for the core, or (reply, close) when the edge
        answers it: a parse error, STATS (read-only counters), the allow-list."""
        cfg = self.config
        try:
            command = protocol.parse_command(
                line, command_bytes_max=cfg.command_bytes_max, timeout_max_s=cfg.job_timeout_max_s,
                wait_max_s=cfg.wait_max_s, list_max=cfg.list_max)
        except protocol.ClientError as exc:
            return exc.reply(), False
        if type(command) is protocol.Stats:
            return protocol.lines_reply("stats", [f"{k}={v}" for k, v in self.statistics().items()]), False
        allow = self.security.allow
        if (allow is not None and type(command) is protocol.Submit and command.spec.kind == "sh"
                and not allow.allows(command.spec.command)):
            self.edge_stats["submit_not_allowed"] += 1
            return protocol.err(ErrorCode.NOT_ALLOWED, "this peer runs only the commands on its allow-list"), False
        return command

    async def _receive_more(self, reading: _Reading, client: Session) -> bytes | None:
        """The next bytes (b"" at EOF), or None once the connection is closed
        for a slow sender or an idle client."""
        cfg = self.config
        while True:
            now = trio.current_time()
            if reading.splitter.pending_bytes:
                reading.partial_since = reading.partial_since if reading.partial_since is not None else now
            else:
                reading.partial_since = None
            idle_at = now + cfg.client_idle_s
            slow_at = reading.partial_since + cfg.slow_sender_s if reading.partial_since is not None else math.inf
            with trio.move_on_at(min(idle_at, slow_at)):
                return await reading.stream.receive_some(_RECEIVE_BYTES)
            if slow_at <= idle_at:
                self.edge_stats["slow_sender"] += 1
                message = protocol.err(ErrorCode.SLOW_SENDER, f"line not completed within {cfg.slow_sender_s:g} s; closing")
            elif client.pending:
                continue  # a WAIT is outstanding: the client is not idle
            else:
                message = protocol.err(ErrorCode.IDLE_TIMEOUT, f"no request for {cfg.client_idle_s:g} s; closing")
            slot = Slot()
            client.pending.append(slot)
            fill(client, slot, message, True)
            return None

    async def _read_while_waiting(self, stream, client: Session, slot: Slot, backlog: bytearray) -> bool:
        """Read the client until `slot` (its WAIT) is answered, EOF (True),
        or `line_bytes_max` bytes wait in `backlog` (then it is left unread:
        backpressure, as for any client that sends faster than it is served)."""
        eof = False
        async with trio.open_nursery() as nursery:

            async def answered() -> None:
                while not slot.answered:
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
