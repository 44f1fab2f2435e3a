"""The client side of the text protocol: one implementation for the CLI, the
HTTP dashboard, the tests, the benchmarks and `sim/`.

Synchronous:

    from executor.client import Client
    with Client("127.0.0.1:7001") as c:
        job = c.submit("echo hello")
        print(c.wait(job, timeout_s=10).state)      # done
        print(c.result(job).stdout)                 # b'hello\\n'

trio:

    import trio
    from executor.client import AsyncClient

    async def main():
        async with AsyncClient("127.0.0.1:7001") as c:
            ids = await c.submit_many(["SUBMIT echo a", "SUBMIT echo b"])
            for job in ids:
                print((await c.wait(job)).state)

    trio.run(main)

Both speak through `ReplyReader`, a sans-IO parser of the peer's replies
(single line, `OK <k> ...` plus k lines, and RESULT's counted bytes); the two
classes only move bytes. `submit_many` and `request_many` pipeline: they
write many lines before reading the replies (which come back in order), so
one connection keeps dozens of requests in flight.

Errors: `ERR <code> <message>` raises `PeerError` (`WaitTimeout` for
`ERR timeout`); a peer that cannot be reached raises `Unreachable` (a
`ConnectionError`); a connection that breaks or says something that is not
the protocol raises `ConnectionError`.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

_RECEIVE_BYTES = 65536
DEFAULT_ADDR = "127.0.0.1:7001"
WINDOW = 32
FINAL_STATES = ("done", "failed", "cancelled")


# ---------------------------------------------------------------------------
# Errors and values


class PeerError(Exception):
    """The peer answered `ERR <code> <message>`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class WaitTimeout(PeerError):
    """`ERR timeout`: the job was not final when the wait ran out."""


class Unreachable(ConnectionError):
    """Nothing answers at the address (refused, no route, timed out)."""


def _peer_error(code: str, message: str) -> PeerError:
    return (WaitTimeout if code == "timeout" else PeerError)(code, message)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    fields: dict[str, str]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def exit_code(self) -> int | None:
        value = self.fields.get("exit", "-")
        return None if value == "-" else int(value)

    @property
    def attempt(self) -> int:
        return int(self.fields.get("attempt", "1"))

    @property
    def executor(self) -> str:
        return self.fields.get("executor", "-")

    @property
    def reason(self) -> str | None:
        return self.fields.get("reason")

    @property
    def submitted(self) -> float | None:
        value = self.fields.get("submitted")
        return float(value) if value else None

    @property
    def runtime_ms(self) -> int | None:
        value = self.fields.get("runtime_ms")
        return int(value) if value else None

    def to_dict(self) -> dict:
        return {"id": self.job_id, "state": self.state, "attempt": self.attempt, "executor": self.executor,
                "exit": self.exit_code, "reason": self.reason, "submitted": self.submitted,
                "runtime_ms": self.runtime_ms}


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    stdout: bytes
    stderr: bytes

    @property
    def job_id(self) -> str:
        return self.status.job_id

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def exit_code(self) -> int | None:
        return self.status.exit_code

    @property
    def truncated(self) -> bool:
        return self.status.fields.get("truncated") == "yes"

    def to_dict(self) -> dict:
        d = self.status.to_dict()
        del d["submitted"], d["runtime_ms"]
        d.update(stdout=self.stdout.decode(errors="replace"), stderr=self.stderr.decode(errors="replace"),
                 truncated=self.truncated)
        return d


@dataclass(frozen=True)
class PeerInfo:
    """One member of the cluster as a peer sees it (a PEERS line)."""

    id: str
    addr: str
    state: str  # alive | suspect | dead
    incarnation: int | None
    queued: int | None  # None: no load heard yet
    running: int | None
    slots: int | None
    is_self: bool

    def to_dict(self) -> dict:
        return {"id": self.id, "addr": self.addr, "state": self.state, "incarnation": self.incarnation,
                "queued": self.queued, "running": self.running, "slots": self.slots, "self": self.is_self}


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text not in (None, "-") else None


def parse_status(text: str) -> JobStatus:
    job_id, state, *rest = text.split(" ")
    fields = dict(item.split("=", 1) for item in rest if "=" in item)
    return JobStatus(job_id, state, fields)


def parse_peer(line: str) -> PeerInfo:
    words = line.split(" ")
    fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
    return PeerInfo(words[0], words[1], words[2], _int_or_none(fields.get("incarnation")),
                    _int_or_none(fields.get("queued")), _int_or_none(fields.get("running")),
                    _int_or_none(fields.get("slots")), words[-1] == "self")


def split_addr(addr: str) -> tuple[str, int]:
    """"HOST:PORT" (or ":PORT") -> (host, port); ValueError otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


# ---------------------------------------------------------------------------
# Sans-IO reply parsing

LINE, LINES, RESULT = "line", "lines", "result"


def reply_shape(request: str) -> str:
    """How the reply to `request` is framed (docs/protocol.md, Framing)."""
    verb = request.split(" ", 1)[0].upper()
    if verb in ("LIST", "PEERS", "HELP", "STATS"):
        return LINES
    if verb == "RESULT" or (verb.startswith("R") and verb != "R" and not verb.isdigit() and "-" in verb) or verb == "R":
        return RESULT
    return LINE


@dataclass
class Reply:
    """One reply: `ok` with its first line's text after `OK `, and the lines
    (LINES) or bytes (RESULT) that follow; else `code` and `message`."""

    ok: bool
    text: str = ""
    lines: list[str] = field(default_factory=list)
    stdout: bytes = b""
    stderr: bytes = b""
    code: str = ""
    message: str = ""

    def check(self) -> Reply:
        if not self.ok:
            raise _peer_error(self.code, self.message)
        return self


class ReplyReader:
    """Bytes in (`feed`), whole replies out (`next`). Holds the bytes of an
    incomplete reply until the rest arrives; never consumes half a reply."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def line(self) -> str | None:
        nl = self.buf.find(b"\n")
        if nl < 0:
            return None
        line = bytes(self.buf[:nl]).rstrip(b"\r").decode(errors="replace")
        del self.buf[: nl + 1]
        return line

    def exact(self, n: int) -> bytes | None:
        if len(self.buf) < n:
            return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def next(self, shape: str = LINE) -> Reply | None:
        buf = self.buf
        nl = buf.find(b"\n")
        if nl < 0:
            return None
        head = bytes(buf[:nl]).rstrip(b"\r").decode(errors="replace")
        if head.startswith("ERR "):
            del buf[: nl + 1]
            code, _, message = head[4:].partition(" ")
            return Reply(False, code=code, message=message)
        if not (head == "OK" or head.startswith("OK ")):
            raise ConnectionError(f"unexpected reply from the peer: {head[:80]!r}")
        text = head[3:]
        if shape == LINE:
            del buf[: nl + 1]
            return Reply(True, text)
        if shape == LINES:
            count = int(text.split(" ", 1)[0])
            end = nl
            for _ in range(count):
                end = buf.find(b"\n", end + 1)
                if end < 0:
                    return None
            lines = bytes(buf[nl + 1 : end]).decode(errors="replace").split("\n") if count else []
            del buf[: end + 1]
            return Reply(True, text, lines=[x.rstrip("\r") for x in lines])
        status = parse_status(text)
        n, m = int(status.fields.get("stdout", 0)), int(status.fields.get("stderr", 0))
        if len(buf) < nl + 1 + n + m + 1:
            return None
        body = bytes(buf[nl + 1 : nl + 1 + n + m])
        del buf[: nl + 1 + n + m + 1]
        return Reply(True, text, stdout=body[:n], stderr=body[n:])


# ---------------------------------------------------------------------------
# Requests: the line for each command, shared by both clients


def submit_line(command: str, timeout_s: float | None = None) -> str:
    if "\n" in command or "\r" in command:
        raise ValueError("a command is one line (no newline); submit several with submit_many")
    opt = f"--timeout {timeout_s:g} " if timeout_s is not None else ""
    return f"SUBMIT {opt}{command}"


def wait_line(job_id: str, timeout_s: float | None) -> str:
    return f"WAIT {job_id}" + (f" {max(timeout_s, 0.001):g}" if timeout_s is not None else "")


def result_of(reply: Reply) -> JobResult:
    return JobResult(parse_status(reply.check().text), reply.stdout, reply.stderr)


def stats_of(reply: Reply) -> dict[str, int]:
    out = {}
    for line in reply.check().lines:
        k, _, v = line.partition("=")
        out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


def _connect_error(addr: str, exc: OSError) -> Unreachable:
    cause = exc.__cause__  # trio: "all attempts to connect ... failed", the real error inside
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        exc = cause
    why = (os.strerror(exc.errno) if exc.errno else exc.strerror) or str(exc) or type(exc).__name__
    if isinstance(exc, (socket.timeout, TimeoutError)):
        why = "timed out"
    return Unreachable(f"cannot reach peer {addr}: {why.lower() if why[:1].isupper() else why}"
                       f" (is `peerjobs node` running there?)")


# ---------------------------------------------------------------------------
# Synchronous client


class Client:
    """A blocking connection to one peer. `timeout_s` bounds every read
    (a WAIT's own timeout extends it). `token`: sent as `AUTH <token>` first
    (a peer with a client token requires it); `ssl_context`: speak TLS."""

    def __init__(self, addr: str = DEFAULT_ADDR, *, timeout_s: float = 30.0, token: str | None = None,
                 ssl_context=None) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        try:
            self.sock = socket.create_connection(split_addr(addr), timeout=timeout_s)
        except OSError as exc:
            raise _connect_error(addr, exc) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=split_addr(addr)[0])
        self._reader = ReplyReader()
        if token is not None:
            try:
                self.request(f"AUTH {token}")
            except BaseException:
                self.sock.close()
                raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # --- raw I/O

    def send_lines(self, lines: list[str]) -> None:
        self.sock.sendall("".join(line + "\n" for line in lines).encode())

    def _fill(self) -> None:
        try:
            data = self.sock.recv(_RECEIVE_BYTES)
        except socket.timeout:
            raise TimeoutError(f"peer {self.addr} did not answer within {self.sock.gettimeout():g} s") from None
        if not data:
            raise ConnectionError(f"peer {self.addr} closed the connection")
        self._reader.feed(data)

    def read_line(self) -> str:
        while (line := self._reader.line()) is None:
            self._fill()
        return line

    def read_exact(self, n: int) -> bytes:
        while (data := self._reader.exact(n)) is None:
            self._fill()
        return data

    def read(self, shape: str = LINE) -> Reply:
        while (reply := self._reader.next(shape)) is None:
            self._fill()
        return reply

    def read_reply(self) -> str:
        """One single-line reply's text after `OK `; `ERR` raises `PeerError`."""
        return self.read(LINE).check().text

    def request(self, line: str) -> str:
        self.send_lines([line])
        return self.read_reply()

    def request_many(self, lines: list[str], *, window: int = WINDOW) -> list[Reply]:
        """Pipeline `lines`, `window` outstanding at a time; their replies in order."""
        out: list[Reply] = []
        sent = 0
        while len(out) < len(lines):
            if sent < len(lines) and sent - len(out) < window:
                chunk = lines[sent : min(len(lines), len(out) + window)]
                self.send_lines(chunk)
                sent += len(chunk)
            out.append(self.read(reply_shape(lines[len(out)])))
        return out

    def _lines(self, line: str) -> list[str]:
        self.send_lines([line])
        return self.read(LINES).check().lines

    # --- commands

    def submit(self, command: str, *, timeout_s: float | None = None) -> str:
        """Submit one shell command; its job id once the peer has it on disk."""
        return self.request(submit_line(command, timeout_s))

    def submit_sleep(self, ms: int) -> str:
        return self.request(str(ms))

    def submit_many(self, lines: list[str], *, window: int = WINDOW) -> list[str | PeerError]:
        """Pipeline raw submission lines (`SUBMIT ...` or `<ms>`); one job id
        or PeerError per line, in order."""
        return [r.text if r.ok else _peer_error(r.code, r.message) for r in self.request_many(lines, window=window)]

    def submit_commands(self, commands: list[str], *, timeout_s: float | None = None,
                        window: int = WINDOW) -> list[str | PeerError]:
        """Submit many shell commands (pipelined); a job id or PeerError each."""
        return self.submit_many([submit_line(c, timeout_s) for c in commands], window=window)

    def status(self, job_id: str) -> JobStatus:
        return parse_status(self.request(f"STATUS {job_id}"))

    def statuses(self, job_ids: list[str], *, window: int = 256) -> list[JobStatus | PeerError]:
        """STATUS of many jobs, pipelined."""
        replies = self.request_many([f"STATUS {j}" for j in job_ids], window=window)
        return [parse_status(r.text) if r.ok else _peer_error(r.code, r.message) for r in replies]

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        """Block until the job is final; `WaitTimeout` if `timeout_s` runs
        out first. Without a timeout, waits as long as it takes."""
        old = self.sock.gettimeout()
        try:
            while True:
                self.sock.settimeout(None if timeout_s is None else timeout_s + self.timeout_s)
                try:
                    return parse_status(self.request(wait_line(job_id, timeout_s)))
                except WaitTimeout:
                    if timeout_s is not None:
                        raise
        finally:
            self.sock.settimeout(old)

    def result(self, job_id: str) -> JobResult:
        """Status, stdout and stderr of a finished job (`PeerError` code
        `not-finished` before that)."""
        self.send_lines([f"RESULT {job_id}"])
        return result_of(self.read(RESULT))

    def cancel(self, job_id: str) -> None:
        self.request(f"CANCEL {job_id}")

    def list(self, count: int = 20) -> list[JobStatus]:
        """The latest `count` jobs submitted to this peer, latest first."""
        return [parse_status(line) for line in self._lines(f"LIST {count}")]

    def peers(self) -> list[str]:
        """The raw PEERS lines (see `members` for parsed ones)."""
        return self._lines("PEERS")

    def members(self) -> list[PeerInfo]:
        """Every member of the cluster with its state and load."""
        return [parse_peer(line) for line in self.peers()]

    def stats(self) -> dict[str, int]:
        """This peer's counters (STATS)."""
        self.send_lines(["STATS"])
        return stats_of(self.read(LINES))


def connect(addr: str = DEFAULT_ADDR, *, timeout_s: float = 30.0) -> Client:
    return Client(addr, timeout_s=timeout_s)


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

    async def submit(self, command: str, *, timeout_s: float | None = None) -> str:
        return (await self.request(submit_line(command, timeout_s))).check().text

    async def submit_many(self, lines: list[str], *, window: int = WINDOW) -> list[str | PeerError]:
        replies = await self.request_many(lines, window=window, timeout_s=self.timeout_s + len(lines) / 100)
        return [r.text if r.ok else _peer_error(r.code, r.message) for r in replies]

    async def submit_commands(self, commands: list[str], *, timeout_s: float | None = None,
                              window: int = WINDOW) -> list[str | PeerError]:
        return await self.submit_many([submit_line(c, timeout_s) for c in commands], window=window)

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

    async def list(self, count: int = 20) -> list[JobStatus]:
        return [parse_status(line) for line in (await self.request(f"LIST {count}")).check().lines]

    async def peers(self) -> list[str]:
        return (await self.request("PEERS")).check().lines

    async def members(self) -> list[PeerInfo]:
        return [parse_peer(line) for line in await self.peers()]

    async def stats(self) -> dict[str, int]:
        return stats_of(await self.request("STATS"))
