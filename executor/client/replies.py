"""The client side of the text protocol, sans-IO: replies parsed (`ReplyReader`:
single lines, `OK <k> ...` plus k lines, RESULT's counted bytes), the values
they carry, the errors they raise, and the lines requests are made of. The
sync and trio clients (`executor/client/sync.py`, `aio.py`) only move bytes."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from executor.client.lines import list_line, submit_line, wait_line  # noqa: F401 -- names kept here
from executor.core.errors import FIELD_TOKEN, ErrorCode

_RECEIVE_BYTES = 65536
DEFAULT_ADDR = "127.0.0.1:7001"
WINDOW = 32
FINAL_STATES = ("done", "failed", "cancelled")
STATES = ("queued", "running", "done", "failed", "cancelled", "scheduled", "waiting")
"""Every state a STATUS/WAIT/LIST line may carry (docs/protocol.md)."""


# ---------------------------------------------------------------------------
# Errors and values


class PeerError(Exception):
    """The peer answered `ERR <code> [key=value ...] <message>`.

    `code` is an `ErrorCode` (a plain str when a newer peer sends a code this
    client does not know); `fields` holds the leading `key=value` tokens,
    which are data (`not-home`'s `home=`); `message` is the prose after them."""

    def __init__(self, code: ErrorCode | str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = dict(fields or {})


class WaitTimeout(PeerError):
    """`ERR timeout`: the job was not final when the wait ran out."""


class Unreachable(ConnectionError):
    """Nothing answers at the address (refused, no route, timed out)."""


def _error_code(text: str) -> ErrorCode | str:
    try:
        return ErrorCode(text)
    except ValueError:
        return text  # a code of a newer peer: kept as it came


def parse_error(line: str) -> PeerError:
    """The `PeerError` of one `ERR ...` line (with or without its `ERR `)."""
    code, _, rest = line.strip().removeprefix("ERR ").partition(" ")
    return _peer_error(code, rest)


def _peer_error(code: str, rest: str) -> PeerError:
    """The error an `ERR <code> <rest>` line stands for: leading `key=value`
    tokens of `rest` become `fields`, the remainder is the message."""
    fields: dict[str, str] = {}
    words = rest.split(" ")
    while len(words) > 1 and FIELD_TOKEN.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        fields[key] = value
    known = _error_code(code)
    return (WaitTimeout if known == ErrorCode.TIMEOUT else PeerError)(known, " ".join(words), fields)


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

    @property
    def priority(self) -> int:
        """Higher starts first; 0 (the default) when the line has no `priority=`."""
        return int(self.fields.get("priority", "0"))

    @property
    def tries(self) -> tuple[int, int] | None:
        """`try=K/N`: this is try K of at most N (`--retries N-1`); None for a
        job submitted without retries (the line has no `try=`)."""
        value = self.fields.get("try")
        if not value:
            return None
        k, _, n = value.partition("/")
        return int(k), int(n)

    @property
    def due(self) -> float | None:
        """The unix time a `scheduled` job (or a retry's wait) becomes queued."""
        value = self.fields.get("due")
        return float(value) if value else None

    @property
    def after(self) -> list[str]:
        """The job ids a `waiting` job still waits for (`after=ID,ID`)."""
        value = self.fields.get("after")
        return value.split(",") if value else []

    @property
    def is_parent(self) -> bool:
        """An array (`array=`) or periodic job (`every=`/`cron=`): its line
        counts its children by state instead of describing one run."""
        return any(key in self.fields for key in ("array", "every", "cron"))

    @property
    def command(self) -> str | None:
        """The job's command, when the line carries it (`command=` is then
        the last field and runs to the end of the line); None otherwise."""
        return self.fields.get("command")

    def to_dict(self) -> dict:
        if self.is_parent:  # the parent's own fields, numbers as numbers
            rest = {k: int(v) if v.isdigit() else v for k, v in self.fields.items() if k != "submitted"}
            return {"id": self.job_id, "state": self.state, "submitted": self.submitted, **rest}
        tries = self.tries
        return {"id": self.job_id, "state": self.state, "attempt": self.attempt, "executor": self.executor,
                "exit": self.exit_code, "reason": self.reason, "submitted": self.submitted,
                "runtime_ms": self.runtime_ms, "priority": self.priority,
                "try": None if tries is None else list(tries), "due": self.due, "after": self.after,
                "command": self.command}


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

    @property
    def text(self) -> str:
        """stdout as text (UTF-8; bytes that are not become U+FFFD)."""
        return self.stdout.decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        d = self.status.to_dict()
        for key in ("submitted", "runtime_ms", "priority", "try", "due", "after", "command"):
            del d[key]
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
    """One STATUS/WAIT/LIST line: `<id> <state> key=value ...`. A `command=`
    field, if a peer sends one, must be the last: its value (which may hold
    spaces) runs to the end of the line."""
    head, sep, command = text.partition(" command=")
    job_id, state, *rest = head.split(" ")
    fields = dict(item.split("=", 1) for item in rest if "=" in item)
    if sep:
        fields["command"] = command
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
    if verb == "TAIL" and not request.rstrip().endswith(" -f"):
        return RESULT  # (TAIL -f is a stream of such frames: executor/client/tail.py reads it)
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
# Requests: the line for each command, shared by both clients, are built in
# executor/client/lines.py (`submit_line`, `wait_line`, `list_line`).


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


