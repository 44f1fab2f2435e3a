"""Peer links over TCP: length-prefixed CBOR frames after a hello line. trio edge.

Each peer sends on links it opens itself (one per destination address) and
receives on links others open to it, so a link carries frames one way only
and needs no request matching. Links are lazy: the first frame for an address
opens one. A link that breaks, or that cannot be opened, drops what was queued
on it and is reported to the core as `PeerUnreachable` — a hint to membership,
never a verdict — and the core's own timers resend what matters (results
until acknowledged; steals and handoffs time out and are taken back).

Bounds: `peer_send_queue_max` frames wait per link (past it a frame is dropped
and counted); `frame_bytes_max` per frame, checked on both sides; a link
that sends bytes the codec rejects is closed, logged and counted, and the peer
keeps serving everybody else.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from executor.core import PeerMessage, PeerUnreachable
from gossip import wire

log = logging.getLogger("peerjobs")

_RECEIVE_BYTES = 65536
_CONNECT_TIMEOUT_S = 2.0
_RECONNECT_BACKOFF_S = 0.05
"""After a failed connect, frames for that address are dropped for this long
(a dead peer costs one refused connect per backoff, not one per frame)."""


async def _open_tcp(addr: str) -> trio.SocketStream:
    host, _, port = addr.rpartition(":")
    return await trio.open_tcp_stream(host.strip("[]"), int(port))


class Links:
    def __init__(self, node, nursery: trio.Nursery, connect=None) -> None:
        self.node = node
        self._connect = connect or _open_tcp
        self.nursery = nursery
        self.config = node.config
        self._out: dict[str, trio.MemorySendChannel] = {}
        self._failed_at: dict[str, float] = {}
        self.stats: Counter[str] = Counter()

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
            channel.send_nowait(wire.frame(payload))
            self.stats["frames_sent"] += 1
            self.stats["bytes_sent"] += len(payload) + wire.FRAME_HEADER_BYTES
        except trio.WouldBlock:
            self.stats["dropped_queue_full"] += 1

    async def _writer(
        self, peer_id: str | None, addr: str, channel: trio.MemorySendChannel, frames: trio.MemoryReceiveChannel
    ) -> None:
        try:
            with trio.fail_after(_CONNECT_TIMEOUT_S):
                stream = await self._connect(addr)
            async with stream:
                node = self.node
                incarnation = node.core.cluster.membership.incarnation
                await stream.send_all(wire.hello_line(node.peer_id, incarnation, node.addr))
                while True:
                    batch = [await frames.receive()]
                    while len(batch) < self.config.peer_send_queue_max:
                        try:
                            batch.append(frames.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await stream.send_all(b"".join(batch))
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, ValueError) as exc:
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

    async def serve_inbound(self, stream: trio.SocketStream, first: bytes) -> None:
        line, _, rest = first.partition(b"\n")
        try:
            peer_id, _incarnation, addr = wire.parse_hello(line + b"\n")
        except wire.ProtocolError as exc:
            self.stats["bad_hello"] += 1
            log.warning("%s: refused a peer link: %s", self.node.peer_id, exc)
            return
        decoder = wire.FrameDecoder(self.config.frame_bytes_max)
        inbox = self.node.inbox_send
        data = rest
        try:
            while True:
                for payload in decoder.feed(data):
                    msg = wire.decode(payload)
                    await inbox.send(PeerMessage(peer_id, msg, addr))
                    self.stats["frames_received"] += 1
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    return
                self.stats["bytes_received"] += len(data)
        except wire.ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            log.warning("%s: closed the link from %s: %s", self.node.peer_id, peer_id, exc)
        except trio.BrokenResourceError:
            pass
