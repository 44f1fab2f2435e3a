"""Client connections and the first bytes of every connection: the trio
edge between sockets and the core (a mixin of `executor.edge.node.Node`).

Each connection is a client (text lines) or a peer link (a hello line, then
frames: executor/edge/links.py); its first line says which, and each kind has
its own budget. Per client: a reader (lines -> commands -> the inbox) and a
writer (replies in request order, so clients may pipeline). Nothing a remote
sends may raise out of `serve`: disconnects end the connection quietly, and
anything else is logged and counted as `link_handler_errors` (a bug)."""

from __future__ import annotations

import ipaddress
import logging

import trio

from executor.core import protocol
from executor.core.protocol import ErrorCode
from gossip.wire import HELLO_LINE_BYTES_MAX, HELLO_PREFIX

log = logging.getLogger("peerjobs")

_RECEIVE_BYTES = 65536
from executor.edge.sessions import SessionsMixin


class ConnectionsMixin(SessionsMixin):
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
                    ErrorCode.TOO_MANY_CONNECTIONS, f"this peer serves at most {cfg.client_connections_max} connections"))
                return
            if limited and self._per_source[source] >= cfg.client_connections_per_source_max:
                self.edge_stats["refused_per_source"] += 1
                await _say(stream, protocol.err(
                    ErrorCode.TOO_MANY_CONNECTIONS,
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
                    await _say(stream, protocol.err(ErrorCode.SLOW_SENDER, f"line not completed within {cfg.slow_sender_s:g} s; closing"))
                elif token is not None:
                    self.edge_stats["client_auth_refused"] += 1
                    await _say(stream, protocol.err(ErrorCode.AUTH_REQUIRED, "send AUTH <token> first; closing"))
                else:
                    await _say(stream, protocol.err(ErrorCode.IDLE_TIMEOUT, f"no request for {cfg.client_idle_s:g} s; closing"))
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
                await _say(stream, protocol.err(ErrorCode.PROTOCOL_ERROR, "hello line too long"))
                return
            if self.peer_links >= cfg.peer_links_max:
                self.edge_stats["refused_links"] += 1
                await _say(stream, protocol.err(
                    ErrorCode.TOO_MANY_CONNECTIONS, f"this peer serves at most {cfg.peer_links_max} peer links"))
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
                ErrorCode.TOO_MANY_CONNECTIONS, f"this peer serves at most {cfg.client_connections_max} connections"))
            return
        await self._serve_client(stream, first)


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
