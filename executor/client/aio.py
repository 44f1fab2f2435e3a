"""The trio client: the same commands as `Client`, for trio programs (the
harnesses in sim/, the benchmarks)."""

from __future__ import annotations

import math
from typing import Unpack

from executor.client.lines import SubmitOptions
from executor.client.replies import (
    _RECEIVE_BYTES,
    DEFAULT_ADDR,
    LINE,
    WINDOW,
    JobResult,
    JobStatus,
    PeerError,
    PeerInfo,
    Reply,
    ReplyReader,
    WaitTimeout,
    _connect_error,
    _peer_error,
    list_line,
    parse_peer,
    parse_status,
    reply_shape,
    result_of,
    split_addr,
    stats_of,
    submit_line,
    wait_line,
)

# ---------------------------------------------------------------------------
# trio client


class AsyncClient:
    """The same commands for trio. `async with AsyncClient(addr) as c:`
    connects; each request is bounded by `timeout_s` (a WAIT's own timeout
    extends it) and raises `TimeoutError` past it."""

    def __init__(self, addr: str = DEFAULT_ADDR, *, timeout_s: float = 30.0, token: str | None = None,
                 ssl_context=None) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.token = token
        self.ssl_context = ssl_context
        self.stream = None
        self._reader = ReplyReader()

    @classmethod
    async def open(cls, addr: str = DEFAULT_ADDR, *, timeout_s: float = 30.0, **kw) -> AsyncClient:
        client = cls(addr, timeout_s=timeout_s, **kw)
        await client.connect()
        return client

    async def connect(self) -> None:
        import trio

        host, port = split_addr(self.addr)
        try:
            with trio.fail_after(self.timeout_s):
                self.stream = await trio.open_tcp_stream(host, port)
                if self.ssl_context is not None:
                    self.stream = trio.SSLStream(self.stream, self.ssl_context, server_hostname=host)
                    await self.stream.do_handshake()
        except trio.TooSlowError:
            raise _connect_error(self.addr, TimeoutError()) from None
        except OSError as exc:
            raise _connect_error(self.addr, exc) from None
        if self.token is not None:
            (await self.request(f"AUTH {self.token}")).check()

    async def __aenter__(self) -> AsyncClient:
        if self.stream is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        import trio

        if self.stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.stream.aclose()

    async def send_lines(self, lines: list[str]) -> None:
        await self.stream.send_all("".join(line + "\n" for line in lines).encode())

    async def read(self, shape: str = LINE) -> Reply:
        while (reply := self._reader.next(shape)) is None:
            data = await self.stream.receive_some(_RECEIVE_BYTES)
            if not data:
                raise ConnectionError(f"peer {self.addr} closed the connection")
            self._reader.feed(data)
        return reply

    async def request_many(self, lines: list[str], *, window: int = WINDOW,
                           timeout_s: float | None = None) -> list[Reply]:
        """Pipeline `lines`, `window` outstanding; their replies in order."""
        import trio

        out: list[Reply] = []
        sent = 0
        limit = self.timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(limit) as scope:
            while len(out) < len(lines):
                if sent < len(lines) and sent - len(out) < window:
                    chunk = lines[sent : min(len(lines), len(out) + window)]
                    await self.send_lines(chunk)
                    sent += len(chunk)
                out.append(await self.read(reply_shape(lines[len(out)])))
        if scope.cancelled_caught:
            raise TimeoutError(f"peer {self.addr} did not answer within {limit:g} s")
        return out

    async def request(self, line: str, *, timeout_s: float | None = None) -> Reply:
        return (await self.request_many([line], timeout_s=timeout_s))[0]

    # --- commands

    async def submit(self, command: str, *, timeout_s: float | None = None,
                     **options: Unpack[SubmitOptions]) -> str:
        """As `Client.submit` (the same options, checked by `submit_line`)."""
        return (await self.request(submit_line(command, timeout_s, **options))).check().text

    async def submit_many(self, lines: list[str], *, window: int = WINDOW) -> list[str | PeerError]:
        replies = await self.request_many(lines, window=window, timeout_s=self.timeout_s + len(lines) / 100)
        return [r.text if r.ok else _peer_error(r.code, r.message) for r in replies]

    async def submit_commands(self, commands: list[str], *, timeout_s: float | None = None,
                              window: int = WINDOW, **options: Unpack[SubmitOptions]) -> list[str | PeerError]:
        return await self.submit_many([submit_line(c, timeout_s, **options) for c in commands], window=window)

    async def status(self, job_id: str) -> JobStatus:
        return parse_status((await self.request(f"STATUS {job_id}")).check().text)

    async def statuses(self, job_ids: list[str], *, window: int = 256) -> list[JobStatus | PeerError]:
        replies = await self.request_many([f"STATUS {j}" for j in job_ids], window=window,
                                          timeout_s=self.timeout_s + len(job_ids) / 100)
        return [parse_status(r.text) if r.ok else _peer_error(r.code, r.message) for r in replies]

    async def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        while True:
            limit = math.inf if timeout_s is None else timeout_s + self.timeout_s
            try:
                reply = await self.request(wait_line(job_id, timeout_s), timeout_s=limit)
                return parse_status(reply.check().text)
            except WaitTimeout:
                if timeout_s is not None:
                    raise

    async def result(self, job_id: str) -> JobResult:
        return result_of(await self.request(f"RESULT {job_id}"))

    async def cancel(self, job_id: str) -> None:
        (await self.request(f"CANCEL {job_id}")).check()

    async def list(self, count: int = 20, state: str | None = None, array: str | None = None) -> list[JobStatus]:
        return [parse_status(line) for line in (await self.request(list_line(count, state, array))).check().lines]

    async def peers(self) -> list[str]:
        return (await self.request("PEERS")).check().lines

    async def members(self) -> list[PeerInfo]:
        return [parse_peer(line) for line in await self.peers()]

    async def stats(self) -> dict[str, int]:
        return stats_of(await self.request("STATS"))
