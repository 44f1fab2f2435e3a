"""Peer links over TCP: length-prefixed CBOR frames after a hello line. trio edge.

Each peer sends on links it opens itself (one per destination address) and
receives on links others open to it, so a link carries frames one way only
and needs no request matching. Links are lazy: the first frame for an address
opens one. A link that breaks, or that cannot be opened, drops what was queued
on it and is reported to the core as `PeerUnreachable` — a hint to membership,
never a verdict — and the core's own timers resend what matters (results
until acknowledged; steals and handoffs time out and are taken back).

With a cluster secret (`Security.secret`) a link opens with the challenge–
response of gossip/auth.py and every frame carries a MAC bound to that
connection; without one, links are as trusting as the network. With TLS
contexts the link runs inside TLS (docs/security.md).

Bounds: `peer_send_queue_max` frames wait per link (past it a frame is dropped
and counted); `frame_bytes_max` per frame, checked on both sides;
`hello_timeout_s` for the TLS handshake, hello and authentication;
`slow_sender_s` for a started frame to arrive whole; `slow_receiver_s` for
the other side to take a batch of frames. A link that sends bytes the codec
rejects, a frame with a bad tag, or a message that fails `check_message`
(executor/edge/link_checks.py: values the codec's type check cannot judge:
ids, addresses, job fields, and who may send what) is closed, logged and counted, and the peer keeps serving
everybody else. Nothing from a closed link reaches the core.
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
from collections import Counter

import trio

from executor.core import PeerMessage, PeerUnreachable
from executor.core.protocol import ErrorCode, err
from executor.edge.link_checks import _check_value, check_message  # noqa: F401 -- names kept here
from gossip import auth, membership, wire
from storage import layout

log = logging.getLogger("peerjobs")

_RECEIVE_BYTES = 65536
_CONNECT_TIMEOUT_S = 2.0
_RECONNECT_BACKOFF_S = 0.05
"""After a failed connect, frames for that address are dropped for this long
(a dead peer costs one refused connect per backoff, not one per frame)."""


async def _open_tcp(addr: str) -> trio.SocketStream:
    host, _, port = addr.rpartition(":")
    return await trio.open_tcp_stream(host.strip("[]"), int(port))


# ---------------------------------------------------------------------------


class Links:
    def __init__(self, node, nursery: trio.Nursery, connect=None) -> None:
        self.node = node
        self._connect = connect or _open_tcp
        self.nursery = nursery
        self.config = node.config
        self.security = node.security
        self._out: dict[str, trio.MemorySendChannel] = {}
        self._failed_at: dict[str, float] = {}
        self.stats: Counter[str] = node.edge_stats
        # This peer's data directory and the other peers' (name conflicts:
        # gossip/wire.py InstanceBook, docs/membership.md).
        raw = node.store.get(layout.META_INSTANCE)
        self.instance: str | None = raw.decode() if raw is not None else None
        self.instances = wire.InstanceBook(node.peer_id, self.instance or "", self.config.gossip.members_max)

    # --- sending

    def send(self, peer_id: str | None, addr: str, msg) -> None:
        payload = wire.encode(msg)
        if len(payload) > self.config.frame_bytes_max:
            self.stats["dropped_oversize"] += 1
            log.warning("%s: frame of %d bytes for %s over the bound; dropped", self.node.peer_id, len(payload), addr)
            return
        channel = self._out.get(addr)
        if channel is None:
            if trio.current_time() - self._failed_at.get(addr, -1e9) < _RECONNECT_BACKOFF_S:
                self.stats["dropped_backoff"] += 1
                return
            channel, receive = trio.open_memory_channel(self.config.peer_send_queue_max)
            self._out[addr] = channel
            self.nursery.start_soon(self._writer, peer_id, addr, channel, receive)
        try:
            channel.send_nowait(payload)
            self.stats["frames_sent"] += 1
            self.stats["bytes_sent"] += len(payload) + wire.FRAME_HEADER_BYTES
        except trio.WouldBlock:
            self.stats["dropped_queue_full"] += 1

    async def _open(self, addr: str):
        stream = await self._connect(addr)
        if hasattr(stream, "setsockopt") and hasattr(socket, "TCP_USER_TIMEOUT"):
            # A link whose data goes unacknowledged (the peer is cut off or
            # gone) is closed by the kernel after this long, instead of
            # retransmitting with a back-off that grows to minutes; the next
            # frame opens a fresh link, so a healed partition heals at once.
            unacked_ms = int(self.config.peer_link_unacked_s * 1000)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, unacked_ms)
        ctx = self.security.client_ssl
        if ctx is not None:
            host = addr.rpartition(":")[0].strip("[]")
            stream = trio.SSLStream(stream, ctx, server_hostname=host)
            await stream.do_handshake()
        return stream

    async def _hello(self, stream, addr: str):
        """The initiator's side of the handshake: hello (and authentication
        with a cluster secret), then the acceptor's verdict, before any frame.
        Returns how to seal frames. A `name-conflict` verdict raises
        `wire.NameConflict`, which stops this peer (executor/client/cli.py)."""
        node = self.node
        incarnation = node.core.incarnation
        hello = wire.hello_line(node.peer_id, incarnation, node.addr, self.instance)
        initiator = None
        if self.security.secret is None:
            await stream.send_all(hello)
        else:
            initiator = auth.Initiator(self.security.secret, hello, secrets.token_bytes(auth.NONCE_BYTES))
            await stream.send_all(initiator.start())
            while not initiator.done:
                data = await stream.receive_some(auth.AUTH_LINE_BYTES_MAX)
                if not data:
                    raise auth.AuthError("the acceptor closed the link during the handshake")
                proof = initiator.feed(data)
            await stream.send_all(proof)
        # The verdict: one line, and nothing after it (links carry frames one
        # way); its bound covers the MAC that seals it under a secret.
        line_max = wire.VERDICT_LINE_BYTES_MAX + auth.VERDICT_MAC_HEX + 1
        line = b""
        while b"\n" not in line:
            if len(line) > line_max:
                raise wire.ProtocolError("verdict line too long")
            data = await stream.receive_some(line_max + 1 - len(line))
            if not data:
                raise wire.ProtocolError("the acceptor closed the link before its verdict")
            line += data
        if not line.endswith(b"\n"):
            raise wire.ProtocolError("bytes after the acceptor's verdict")
        if initiator is not None:
            if line.startswith(b"ERR "):
                # Refusals before the verdict (auth-failed, too many
                # connections) are not sealed; nor can they stop this peer.
                raise wire.ProtocolError(f"link refused: {line[:120].decode('ascii', 'replace').strip()}")
            line = initiator.open_verdict(line)
        try:
            their_id, their_instance = wire.parse_verdict(line)
        except wire.NameConflict as exc:
            raise wire.NameConflict(f"name conflict: the peer at {addr} refused this peer: {exc}") from None
        # Learnt, not judged: what we know first stands (a later hello of
        # that id with another instance is then the conflict).
        self.instances.learn(their_id, their_instance, replace=False)
        return initiator.sealer.seal if initiator is not None else wire.frame

    async def _writer(
        self, peer_id: str | None, addr: str, channel: trio.MemorySendChannel, frames: trio.MemoryReceiveChannel
    ) -> None:
        cfg = self.config
        try:
            with trio.fail_after(_CONNECT_TIMEOUT_S + (cfg.hello_timeout_s if self.security.client_ssl else 0)):
                stream = await self._open(addr)
            async with stream:
                with trio.fail_after(cfg.hello_timeout_s):
                    seal = await self._hello(stream, addr)
                while True:
                    batch = [await frames.receive()]
                    while len(batch) < cfg.peer_send_queue_max:
                        try:
                            batch.append(frames.receive_nowait())
                        except trio.WouldBlock:
                            break
                    with trio.fail_after(cfg.slow_receiver_s):
                        await stream.send_all(b"".join(seal(p) for p in batch))
        except wire.ProtocolError as exc:
            self.stats["links_failed"] += 1
            self.stats["auth_failed_out"] += 1
            self._failed_at[addr] = trio.current_time()
            log.warning("%s: link to %s (%s) refused: %s", self.node.peer_id, peer_id, addr, exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ValueError) as exc:
            self.stats["links_failed"] += 1
            self._failed_at[addr] = trio.current_time()
            log.debug("%s: link to %s (%s) failed: %s", self.node.peer_id, peer_id, addr, exc)
        finally:
            if self._out.get(addr) is channel:
                del self._out[addr]
            frames.close()
        if peer_id is not None:
            await self.node.inbox_send.send(PeerUnreachable(peer_id))

    # --- receiving

    async def serve_inbound(self, stream, first: bytes, source: str, deadline: float) -> None:
        """An accepted connection that began with a hello line (`first` holds
        it and whatever followed). `deadline`: when the handshake must be done.

        In order: the hello, the secret's challenge-response, the verdict on
        the claimed id (a name conflict?), then frames; each step refuses
        the link on its own, and nothing reaches the core before the last."""
        line, _, rest = first.partition(b"\n")
        hello = line + b"\n"
        try:
            peer_id, incarnation, addr, instance = wire.parse_hello_full(hello)
        except wire.ProtocolError as exc:
            self.stats["bad_hello"] += 1
            log.warning("%s: refused a peer link from %s: %s", self.node.peer_id, source, exc)
            await _say(stream, err(ErrorCode.PROTOCOL_ERROR, "bad hello"))
            return
        secret = self.security.secret
        if secret is None and self.security.token is not None:
            self.stats["auth_refused"] += 1
            log.warning("%s: refused a peer link from %s (%s): clients need a token here, so peers need the "
                        "cluster secret (--secret-file), and none is set", self.node.peer_id, source, peer_id)
            await _say(stream, err(ErrorCode.AUTH_FAILED, ""))
            return
        opener = None
        seal_verdict = bytes
        frame_max = self.config.frame_bytes_max
        if secret is not None:
            acceptor = await self._authenticate(stream, hello, rest, source, peer_id, deadline)
            if acceptor is None:
                return
            rest, opener, seal_verdict = acceptor.leftover, acceptor.opener, acceptor.seal_verdict
            frame_max += auth.TAG_BYTES
        if not await self._verdict(stream, seal_verdict, (peer_id, incarnation, addr, instance), source, deadline):
            return
        await self._receive(stream, rest, opener, wire.FrameDecoder(frame_max), peer_id, addr, source)

    async def _authenticate(self, stream, hello: bytes, rest: bytes, source: str, peer_id: str,
                            deadline: float) -> auth.Acceptor | None:
        """The acceptor's side of gossip/auth.py's challenge-response, by
        `deadline`; None (the link refused) when it fails."""
        acceptor = auth.Acceptor(self.security.secret, hello, secrets.token_bytes(auth.NONCE_BYTES))
        try:
            with trio.fail_at(deadline):
                data = rest
                while True:
                    reply = acceptor.feed(data)
                    if reply:
                        await stream.send_all(reply)
                    if acceptor.done:
                        break
                    data = await stream.receive_some(auth.AUTH_LINE_BYTES_MAX)
                    if not data:
                        raise auth.AuthError("closed during the handshake")
        except (auth.AuthError, trio.TooSlowError) as exc:
            self.stats["auth_refused"] += 1
            why = "no handshake in time" if isinstance(exc, trio.TooSlowError) else str(exc)
            log.warning("%s: refused a peer link from %s (claiming %s): %s", self.node.peer_id, source,
                        peer_id, why)
            await _say(stream, err(ErrorCode.AUTH_FAILED, ""))
            return None
        self.stats["auth_ok"] += 1
        return acceptor

    async def _verdict(self, stream, seal_verdict, hello: tuple, source: str, deadline: float) -> bool:
        """Whether the link may go on: refuses (False) a hello whose id is
        another live peer's, else tells the initiator OK when it asked for a
        verdict. Only ever called with the hello authenticated where a secret
        says so (gossip/wire.py InstanceBook)."""
        peer_id, incarnation, addr, instance = hello
        m = self.node.core.member(peer_id)
        member = None if m is None else (m.state is not membership.DEAD, m.addr, m.incarnation)
        conflict = self.instances.judge(peer_id, instance, addr, incarnation, member)
        if conflict is not None:
            self.stats["name_conflicts"] += 1
            log.warning("%s: refused a peer link from %s (%s): name conflict: %s", self.node.peer_id, source,
                        peer_id, conflict)
            await _say(stream, seal_verdict(wire.verdict_conflict(conflict)))
            return False
        if instance is not None and self.instance is not None:  # a hello without one: a tool, no verdict wanted
            with trio.move_on_at(deadline) as scope:
                try:
                    await stream.send_all(seal_verdict(wire.verdict_ok(self.node.peer_id, self.instance)))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return False
            if scope.cancelled_caught:
                return False
        return True

    async def _receive(self, stream, data: bytes, opener, decoder: wire.FrameDecoder, peer_id: str, addr: str,
                       source: str) -> None:
        """Frames of an accepted link into the core's inbox, each checked
        (`check_message`) first; the link closes on the first bad one."""
        inbox = self.node.inbox_send
        slow_s = self.config.slow_sender_s
        try:
            while True:
                for body in decoder.feed(data):
                    payload = opener.open(body) if opener is not None else body
                    msg = wire.decode(payload)
                    check_message(msg, peer_id, self.config)
                    # No trip through the scheduler per frame while the inbox
                    # has room: a link carrying thousands of results a second
                    # is drained a read at a time, so that a probe's Ack behind
                    # them is not late (a busy peer looked dead to the others).
                    event = PeerMessage(peer_id, msg, addr)
                    try:
                        inbox.send_nowait(event)
                    except trio.WouldBlock:
                        await inbox.send(event)
                    self.stats["frames_received"] += 1
                # A frame under way must arrive whole within slow_sender_s;
                # between frames a link may be quiet for as long as it likes.
                partial = decoder.buffered_bytes > 0 or decoder._need is not None
                with trio.move_on_after(slow_s if partial else math.inf) as scope:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                if scope.cancelled_caught:
                    self.stats["slow_sender"] += 1
                    log.warning("%s: closed the link from %s: a frame did not arrive within %g s",
                                self.node.peer_id, peer_id, slow_s)
                    return
                if not data:
                    return
                self.stats["bytes_received"] += len(data)
        except wire.ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            log.warning("%s: closed the link from %s (%s): %s", self.node.peer_id, peer_id, source, exc)
            why = str(exc)[:120].encode("ascii", "replace").decode().replace("\n", " ")
            await _say(stream, err(ErrorCode.PROTOCOL_ERROR, why))


async def _say(stream, line: bytes) -> None:
    """Best effort: a last line before closing; never blocks for long, never raises."""
    with trio.move_on_after(1.0):
        try:
            await stream.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
