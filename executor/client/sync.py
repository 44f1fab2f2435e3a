"""The blocking client: one connection to one peer (see executor/client/__init__.py)."""

from __future__ import annotations

import socket
from typing import Unpack

from executor.client.lines import SubmitOptions
from executor.client.replies import (
    _RECEIVE_BYTES,
    DEFAULT_ADDR,
    LINE,
    LINES,
    RESULT,
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

    def submit(self, command: str, *, timeout_s: float | None = None,
               **options: Unpack[SubmitOptions]) -> str:
        """Submit one shell command; its job id once the peer has it on disk.

        Options (keyword, each None by default: the peer's default): `timeout_s`,
        `retries`, `backoff_s`, `priority`, `env` (a dict), `cwd`, `delay_s`
        or `at`, `keep_s`, `after` and `after_any` (lists of job ids),
        `slots`, and one of `array` ("A-B[%M]"), `every_s` and `cron`; see
        `executor.client.lines.submit_line`, which checks them with the
        peer's own parser and raises ValueError/TypeError, naming the
        option, before anything is sent. A value with spaces is quoted."""
        return self.request(submit_line(command, timeout_s, **options))

    def submit_sleep(self, ms: int) -> str:
        return self.request(str(ms))

    def submit_many(self, lines: list[str], *, window: int = WINDOW) -> list[str | PeerError]:
        """Pipeline raw submission lines (`SUBMIT ...` or `<ms>`); one job id
        or PeerError per line, in order."""
        return [r.text if r.ok else _peer_error(r.code, r.message) for r in self.request_many(lines, window=window)]

    def submit_commands(self, commands: list[str], *, timeout_s: float | None = None,
                        window: int = WINDOW, **options: Unpack[SubmitOptions]) -> list[str | PeerError]:
        """Submit many shell commands (pipelined), each with the same options
        as `submit`; a job id or PeerError each."""
        return self.submit_many([submit_line(c, timeout_s, **options) for c in commands], window=window)

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

    def list(self, count: int = 20, state: str | None = None, array: str | None = None) -> list[JobStatus]:
        """The latest `count` jobs submitted to this peer, latest first; with
        `state`, the latest `count` in that state; with `array`, the children
        of that array or periodic job (the peer filters)."""
        return [parse_status(line) for line in self._lines(list_line(count, state, array))]

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


