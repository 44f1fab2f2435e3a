"""Client connections and the first bytes of every connection: the trio
edge between sockets and the core (a mixin of `executor.node.Node`).

Each connection is a client (text lines) or a peer link (a hello line, then
frames: executor/links.py); its first line says which, and each kind has
its own budget. Per client: a reader (lines -> commands -> the inbox) and a
writer (replies in request order, so clients may pipeline). Nothing a remote
sends may raise out of `serve`: disconnects end the connection quietly, and
anything else is logged and counted as `link_handler_errors` (a bug)."""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import math
from dataclasses import dataclass, field

import trio

from executor import protocol
from executor.core import (
    ClientClosed,
    ClientRequest,
)
from gossip.wire import HELLO_LINE_BYTES_MAX, HELLO_PREFIX

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


class ConnectionsMixin:

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
            data = await self._receive_more(reading, client)
            if data is None:
                return
            if not data:
                reading.eof = True
                if not self._hung_up(client):
                    return

    async def _take_line(self, reading: _Reading, client: _Client, line) -> bool:
        """One line: answered at the edge, or sent to the core. False: stop reading."""
        cfg = self.config
        await client.budget.acquire()
        while client.owed_bytes > cfg.client_reply_bytes_max:
            await client.ready.park()  # the client does not read its replies: stop reading requests
        slot = _Slot()
        client.pending.append(slot)
        if line is protocol.LineSplitter.TOO_LONG:
            if not client.authed:
                _fill(client, slot, protocol.err("auth-required", "send AUTH <token> first; closing"), True)
                return False
            _fill(client, slot, protocol.err("line-too-long", f"line longer than {cfg.line_bytes_max} bytes; dropped"))
            return True
        edge = self._edge_reply(client, line)
        if edge is None:
            edge = self._edge_command(line)
        if isinstance(edge, tuple):
            _fill(client, slot, *edge)
            return not edge[1]
        command = edge
        while len(self._pending_writes) >= cfg.commit_writes_max:
            await self._committed.park()  # backpressure: the disk is behind
        await self.inbox_send.send(ClientRequest((client, slot), command))
        if type(command) is protocol.Quit:
            return False
        if type(command) is protocol.Wait:
            # Commands after a WAIT see the world after it, as a script piped
            # into nc expects; the reply order alone would not give that.
            # Meanwhile the client is still read (into the backlog, unparsed),
            # so that a hang-up frees its connection slot at once. (Not under
            # TLS: a cancelled read may leave an SSLStream broken, so a TLS
            # client's hang-up shows after its WAIT.)
            watch = not reading.eof and not isinstance(reading.stream, trio.SSLStream)
            if watch and await self._read_while_waiting(reading.stream, client, slot, reading.backlog):
                reading.eof = True
                if not self._hung_up(client):
                    return False
            while slot.data is None:
                await client.ready.park()
        return True

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
            return protocol.err("not-allowed", "this peer runs only the commands on its allow-list"), False
        return command

    async def _receive_more(self, reading: _Reading, client: _Client) -> bytes | None:
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
                message = protocol.err("slow-sender", f"line not completed within {cfg.slow_sender_s:g} s; closing")
            elif client.pending:
                continue  # a WAIT is outstanding: the client is not idle
            else:
                message = protocol.err("idle-timeout", f"no request for {cfg.client_idle_s:g} s; closing")
            slot = _Slot()
            client.pending.append(slot)
            _fill(client, slot, message, True)
            return None

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
