"""A client's replies written without its writer task (executor/edge/replies.py
`flush`): only what the socket takes, in request order, never past a streamed
or closing reply, and nothing while the writer itself may be sending. Over a
local socketpair whose send buffer is small, so that writes are partial."""

from __future__ import annotations

import socket

import trio

from executor.edge.replies import Session, Slot, fill, flush

PIPELINE_MAX = 16


def _session() -> tuple[Session, socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client = Session(1, fd=ours.fileno(), writer_idle=True)
    client.budget = trio.Semaphore(PIPELINE_MAX)
    return client, ours, theirs


def _ask(client: Session, reply: bytes | None, close: bool = False) -> Slot:
    """A request in flight, as the reader makes one; `reply`: answered at once."""
    client.budget.acquire_nowait()
    slot = Slot()
    client.pending.append(slot)
    if reply is not None:
        fill(client, slot, reply, close)
    return slot


def _read_available(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


async def test_a_flush_sends_what_the_socket_takes_and_leaves_the_rest_of_a_reply_at_the_head():
    client, ours, theirs = _session()
    with ours, theirs:
        replies = [bytes([ord("a") + i]) * 40_000 for i in range(3)]
        for reply in replies:
            _ask(client, reply)
        total = sum(map(len, replies))
        flush(client)
        got = _read_available(theirs)
        assert 0 < len(got) < total  # the socket took part of it
        assert got == b"".join(replies)[: len(got)]
        assert client.owed_bytes == total - len(got)
        whole = sum(1 for end in (40_000, 80_000, 120_000) if end <= len(got))
        assert len(client.pending) == 3 - whole
        assert client.budget.value == PIPELINE_MAX - len(client.pending)  # released for whole replies only
        assert client.pending[0].data == b"".join(replies)[len(got): 40_000 * (whole + 1)]
        for _ in range(1000):  # bounded: each round moves at least a byte
            if not client.pending:
                break
            flush(client)
            got += _read_available(theirs)
        assert got == b"".join(replies)
        assert client.owed_bytes == 0 and client.budget.value == PIPELINE_MAX


async def test_a_flush_stops_at_an_unanswered_streamed_or_closing_reply_and_keeps_their_order():
    client, ours, theirs = _session()
    with ours, theirs:
        _ask(client, b"OK first\n")
        waiting = _ask(client, None)  # a WAIT not answered yet
        _ask(client, b"OK third\n")
        flush(client)
        assert _read_available(theirs) == b"OK first\n"
        assert list(client.pending) == [waiting, client.pending[1]]
        fill(client, waiting, b"OK second\n")
        streamed = _ask(client, None)
        streamed.data, streamed.streaming = b"frame\n", True  # a TAIL -f part: its writer's to send
        flush(client)
        assert _read_available(theirs) == b"OK second\nOK third\n"
        assert list(client.pending) == [streamed]
        client.pending.clear()
        _ask(client, b"ERR idle-timeout bye\n", close=True)  # the writer closes after it
        flush(client)
        assert _read_available(theirs) == b"" and len(client.pending) == 1


async def test_nothing_is_flushed_while_the_writer_may_be_sending():
    client, ours, theirs = _session()
    with ours, theirs:
        client.writer_idle = False  # the writer is in a send, or this is a TLS connection
        _ask(client, b"OK one\n")
        flush(client)
        assert _read_available(theirs) == b""
        assert len(client.pending) == 1 and client.owed_bytes == len(b"OK one\n")
