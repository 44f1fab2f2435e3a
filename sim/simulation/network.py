"""The network: one-way links, FIFO per (sender, receiver address), as the
TCP links of executor/links.py. A send to a peer that is down, behind the
partition or on a broken link is dropped and the sender hears
`PeerUnreachable`; with the wire codec on, every message crosses as the
bytes gossip.wire makes of it.
"""

from __future__ import annotations

from executor.core import PeerMessage, PeerUnreachable, Send
from gossip import wire
from gossip.membership import GOSSIP_MESSAGES
from sim.simulation.base import _EVENT, _MSG, _Peer

_RECONNECT_BACKOFF_S = 0.05  # executor/links.py: a failed link drops frames this long


class _Link:
    """One-way link from a peer to an address (a TCP connection in links.py)."""

    __slots__ = ("src", "dst", "epoch", "last_at", "open", "stale", "failed_at", "peer_id")

    def __init__(self, src: int, dst: int | None) -> None:
        self.src, self.dst = src, dst
        self.epoch = 0  # bumped when the link breaks: what is in flight is lost
        self.last_at = 0.0  # FIFO: nothing on the link arrives before this
        self.open = False
        self.stale = False  # the receiver died under it: the next send fails
        self.failed_at = -1e9
        self.peer_id: str | None = None  # as links.py: named by the send that opened it



class NetworkMixin:
    """Sends, drops, broken links and delivery."""

    def _send(self, peer: _Peer, send: Send) -> None:
        msg = send.message
        self.report.messages += 1
        if self.steady_from <= self.now < self.opts.duration_s:
            self.steady_messages += 1
            if isinstance(msg, GOSSIP_MESSAGES):
                self.steady_gossip += 1
        tname = type(msg).__name__
        self.types[tname] += 1
        peer.sent[tname] += 1
        key = (peer.idx, send.addr)
        link = self.links.get(key)
        dst_idx = self.by_addr.get(send.addr)
        if link is None:
            link = self.links[key] = _Link(peer.idx, dst_idx)
            self.link_list.append(link)
            self.links_from[peer.idx].append(link)
            if dst_idx is not None:
                self.links_to[dst_idx].append(link)
        if self.wire:
            payload = wire.encode(msg)
            if len(payload) > self.config.frame_bytes_max:
                self.dropped["oversize"] += 1
                return
        else:
            payload = msg
        now = self.now
        if not link.open:
            if now - link.failed_at < _RECONNECT_BACKOFF_S:
                self.dropped["backoff"] += 1
                return
            link.open = True
            link.peer_id = send.peer_id
        dst = self.peers[dst_idx] if dst_idx is not None else None
        if dst is None or not dst.up or link.stale or self._is_cut(peer.idx, dst_idx):
            self.dropped["unreachable"] += 1
            self._fail_link(link, self.net_rng.uniform(0.0005, 0.05))
            return
        at = now + self.net_rng.uniform(0.0001, 0.005)
        if at < link.last_at:
            at = link.last_at
        link.last_at = at
        self._push(at, _MSG, link, link.epoch, (peer.epoch, dst.epoch, payload))

    def _fail_link(self, link: _Link, notice_s: float) -> None:
        """The link broke: what is in flight is lost, the sender hears of it
        (if it named the peer when it opened the link, as links.py)."""
        link.epoch += 1
        link.open = False
        link.stale = False
        link.failed_at = self.now
        src = self.peers[link.src]
        if link.peer_id is not None and src.up:
            self._push(self.now + notice_s, _EVENT, src.idx, src.epoch, PeerUnreachable(link.peer_id))

    def _deliver(self, link: _Link, link_epoch: int, c) -> None:
        if link.epoch != link_epoch:
            self.dropped["in-flight"] += 1
            return
        src_epoch, dst_epoch, payload = c
        src, dst = self.peers[link.src], self.peers[link.dst]
        if src.epoch != src_epoch or dst.epoch != dst_epoch or not dst.up:
            self.dropped["in-flight"] += 1
            return
        if dst.paused_until > self.now:
            # TCP takes it into the socket buffer; the stopped peer reads it when it resumes.
            self.report.deferred += 1
            self._push(dst.paused_until, _MSG, link, link_epoch, c)
            return
        if self._is_cut(src.idx, dst.idx):
            self.dropped["partition"] += 1
            self._fail_link(link, self.net_rng.uniform(0.001, 0.2))
            return
        msg = wire.decode(payload) if self.wire else payload
        self._step(dst, PeerMessage(src.name, msg, src.addr))

    def _is_cut(self, a: int, b: int) -> bool:
        cut = self.cut
        return cut is not None and ((a in cut) != (b in cut))
