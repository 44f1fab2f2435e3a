"""The client side of the text protocol: one implementation for the CLI, the
tests, the benchmarks and `sim/`.

    from executor.client import Client
    with Client("127.0.0.1:7001") as c:
        job = c.submit("echo hello")
        c.wait(job, timeout_s=10)
        print(c.result(job).stdout)

`submit_many` pipelines: it writes many SUBMIT lines before reading the
replies (which come back in order, one per line), so one connection can keep
dozens of submissions in flight.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

_RECEIVE_BYTES = 65536


class PeerError(Exception):
    """The peer answered `ERR <code> <message>`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    fields: dict[str, str]

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    stdout: bytes
    stderr: bytes

    @property
    def exit_code(self) -> int | None:
        value = self.status.fields.get("exit", "-")
        return None if value == "-" else int(value)


def parse_status(text: str) -> JobStatus:
    job_id, state, *rest = text.split(" ")
    fields = dict(item.split("=", 1) for item in rest if "=" in item)
    return JobStatus(job_id, state, fields)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


class Client:
    def __init__(self, addr: str, *, timeout_s: float = 30.0) -> None:
        self.addr = addr
        self.sock = socket.create_connection(split_addr(addr), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

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
        data = self.sock.recv(_RECEIVE_BYTES)
        if not data:
            raise ConnectionError(f"peer {self.addr} closed the connection")
        self._buf += data

    def read_line(self) -> str:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line.decode()
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_reply(self) -> str:
        """One single-line reply; `ERR` raises `PeerError`."""
        line = self.read_line()
        if line.startswith("OK"):
            return line[3:]
        if line.startswith("ERR "):
            code, _, message = line[4:].partition(" ")
            raise PeerError(code, message)
        raise ConnectionError(f"unexpected reply from {self.addr}: {line[:80]!r}")

    def request(self, line: str) -> str:
        self.send_lines([line])
        return self.read_reply()

    def _lines(self, line: str) -> list[str]:
        count = int(self.request(line).split(" ", 1)[0])
        return [self.read_line() for _ in range(count)]

    # --- commands

    def submit(self, command: str, *, timeout_s: float | None = None) -> str:
        opt = f"--timeout {timeout_s:g} " if timeout_s is not None else ""
        return self.request(f"SUBMIT {opt}{command}")

    def submit_sleep(self, ms: int) -> str:
        return self.request(str(ms))

    def submit_many(self, lines: list[str], *, window: int = 32) -> list[str | PeerError]:
        """Pipeline raw submission lines (`SUBMIT ...` or `<ms>`), `window`
        outstanding at a time; one job id or PeerError per line, in order."""
        out: list[str | PeerError] = []
        sent = 0
        while len(out) < len(lines):
            if sent < len(lines) and sent - len(out) < window:
                chunk = lines[sent : min(len(lines), len(out) + window)]
                self.send_lines(chunk)
                sent += len(chunk)
            try:
                out.append(self.read_reply())
            except PeerError as exc:
                out.append(exc)
        return out

    def status(self, job_id: str) -> JobStatus:
        return parse_status(self.request(f"STATUS {job_id}"))

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        suffix = f" {timeout_s:g}" if timeout_s is not None else ""
        return parse_status(self.request(f"WAIT {job_id}{suffix}"))

    def result(self, job_id: str) -> JobResult:
        status = parse_status(self.request(f"RESULT {job_id}"))
        n, m = int(status.fields["stdout"]), int(status.fields["stderr"])
        body = self.read_exact(n + m + 1)
        return JobResult(status, body[:n], body[n : n + m])

    def cancel(self, job_id: str) -> None:
        self.request(f"CANCEL {job_id}")

    def list(self, count: int = 20) -> list[JobStatus]:
        return [parse_status(line) for line in self._lines(f"LIST {count}")]

    def peers(self) -> list[str]:
        return self._lines("PEERS")
