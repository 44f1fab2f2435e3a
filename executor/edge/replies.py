"""A client's replies (the other half of executor/edge/sessions.py): one
`Slot` per request in request order, filled by whoever answers it (the core
through the committer, the reader at the edge, a TAIL -f follower), sent by
the client's writer task — or, while that writer waits for work on a plain
TCP connection, flushed at the end of the burst that readied them (`flush`).

`TAIL <id> -f` is the one reply written in parts (`fill_part`, by its
follower in executor/edge/tail.py); its slot holds back later replies until
its last frame, as a WAIT's does (docs/protocol.md, TAIL)."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

import trio


@dataclass(eq=False)
class Slot:
    """One reply a client is owed, in request order. A streamed reply
    (TAIL -f) is filled in parts: while `streaming`, the writer sends what
    `data` holds and leaves the slot at the head; `stop` asks its follower
    to end the stream (the client hung up)."""

    data: bytes | None = None
    close: bool = False
    streaming: bool = False
    stop: bool = False

    @property
    def answered(self) -> bool:
        """Its whole reply is there (a stream: its last frame too)."""
        return self.data is not None and not self.streaming


@dataclass(eq=False)
class Session:
    """One client connection as its reader, its writer and whoever answers
    it see it: the replies owed (`pending`, in request order) and its bounds."""

    number: int
    pending: collections.deque = field(default_factory=collections.deque)
    ready: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    budget: trio.Semaphore | None = None
    closed: bool = False
    authed: bool = True
    holds_slot: bool = False  # counts against client_connections_max (until EOF)
    draining: int = 0  # 1 while it counts against client_draining_max
    owed_bytes: int = 0  # reply bytes ready and not yet sent (client_reply_bytes_max)
    gone: bool = False  # the connection is over: a TAIL -f follower stops
    fd: int = -1  # a plain TCP connection's socket: replies may leave without its writer (`flush`)
    writer_idle: bool = False  # its writer waits for a ready reply (is in no send); only with `fd`


async def write_replies(stream, client: Session, scope: trio.CancelScope, slow_receiver_s: float,
                        edge_stats: dict) -> None:
    """The client's writer: its replies in request order as they become
    ready, several in one send; a send that takes longer than
    `slow_receiver_s` closes the connection (`scope` is cancelled), as does
    a closing reply once it is sent."""
    pending = client.pending
    try:
        while True:
            while not (pending and pending[0].data is not None):
                if client.closed and not pending:
                    return
                client.writer_idle = client.fd >= 0
                try:
                    await client.ready.park()
                finally:
                    client.writer_idle = False
            out = []
            close = False
            while pending and pending[0].data is not None:
                slot = pending[0]
                out.append(slot.data)
                if slot.streaming:
                    slot.data = None  # more frames follow; the replies behind it wait
                    break
                pending.popleft()
                if client.budget is not None:
                    client.budget.release()
                if slot.close:
                    close = True
                    break
            data = b"".join(out)
            with trio.fail_after(slow_receiver_s):
                await stream.send_all(data)
            client.owed_bytes -= len(data)
            client.ready.unpark_all()
            if close:
                scope.cancel()
                return
    except trio.TooSlowError:
        edge_stats["slow_receiver"] += 1
        scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        scope.cancel()


def flush(client: Session) -> None:
    """Write the client's ready replies now, from the task that readied
    them, while its writer waits: they leave in this scheduler round, not
    after a round that wakes the writer and one more after its send (S2's
    round trip, docs/benchmarks.md). Only what the socket takes without
    waiting, in request order, up to a streamed or closing reply; the rest
    (and a full or broken socket) is the writer's, as is everything of a
    TLS connection. The writer only waits while its stream is open, so
    `fd` is still this connection's."""
    if not client.writer_idle:
        return
    pending = client.pending
    ready = []
    for slot in pending:
        if slot.data is None or slot.streaming or slot.close:
            break
        ready.append(slot.data)
    if not ready:
        return
    try:
        sent = os.write(client.fd, ready[0] if len(ready) == 1 else b"".join(ready))
    except OSError:
        return
    client.owed_bytes -= sent
    for _ in ready:
        slot = pending[0]
        if sent < len(slot.data):
            slot.data = slot.data[sent:]  # the writer sends the rest, then the others
            break
        sent -= len(slot.data)
        pending.popleft()
        if client.budget is not None:
            client.budget.release()
    client.ready.unpark_all()


def fill(client: Session, slot: Slot, data: bytes, close: bool = False) -> None:
    """`slot`'s whole reply (a stream's last frame); `close`: the connection
    ends after it."""
    if slot.streaming:  # a stream's last frame, maybe behind frames not yet written
        slot.data = data if slot.data is None else slot.data + data
        slot.streaming = False
    else:
        slot.data = data
    slot.close = close
    client.owed_bytes += len(data)
    client.ready.unpark_all()


def fill_part(client: Session, slot: Slot, data: bytes) -> None:
    """One frame of a streamed reply, more to follow (`fill` sends the last)."""
    slot.data = data if slot.data is None else slot.data + data
    slot.streaming = True
    client.owed_bytes += len(data)
    client.ready.unpark_all()
