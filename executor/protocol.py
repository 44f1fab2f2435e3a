"""The client text protocol: lines in, commands out; records in, reply bytes out.

Sans-IO in the manner of h11: `LineSplitter` turns a byte stream into lines
(enforcing the line bound without ever buffering past it), `parse_command`
turns one line into a command object or a `ClientError`, and the `format_*`
functions turn records into reply bytes. Nothing here touches a socket, so the
hypothesis tests can throw arbitrary bytes at it.

Grammar (one command per line, UTF-8, LF or CRLF; see docs/protocol.md)::

    SUBMIT [--timeout SECONDS] <shell command>   -> OK <job-id>
    <N>                                          -> OK <job-id>   (sleep N ms in the peer)
    STATUS <job-id>                              -> OK <job-id> <state> key=value ...
    RESULT <job-id>      |  r<job-id>            -> OK <job-id> <state> exit=.. stdout=<n> stderr=<m> ...
                                                    then n + m bytes and a newline
    WAIT <job-id> [SECONDS]                      -> as STATUS once finished, ERR timeout otherwise
    CANCEL <job-id>                              -> OK <job-id> cancelled
    LIST [N]                                     -> OK <k> jobs, then k STATUS lines
    PEERS                                        -> OK <k> peers, then k lines
    STATS                                        -> OK <k> stats, then k name=value lines
    HELP                                         -> OK <k> lines, then k lines
    QUIT                                         -> OK bye, then the peer closes

Every reply is either one line starting with ``OK`` or ``ERR <code> <message>``,
or an ``OK`` header that states exactly how many lines or bytes follow, so a
pipelining client can always find the next reply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Commands


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run. `kind` is "sh" (a /bin/sh -c command) or "sleep" (an
    in-peer sleep of `sleep_ms`, no process: the seed's benchmark job)."""

    kind: str
    command: str = ""
    sleep_ms: int = 0
    timeout_s: float | None = None  # None: the peer's default


@dataclass(frozen=True, slots=True)
class Submit:
    spec: JobSpec


@dataclass(frozen=True, slots=True)
class Status:
    job_id: str


@dataclass(frozen=True, slots=True)
class Result:
    job_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    job_id: str
    timeout_s: float | None  # None: the peer's bound `wait_max_s`


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str


@dataclass(frozen=True, slots=True)
class ListJobs:
    count: int


@dataclass(frozen=True, slots=True)
class Peers:
    pass


@dataclass(frozen=True, slots=True)
class Stats:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


Command = Submit | Status | Result | Wait | Cancel | ListJobs | Peers | Stats | Help | Quit


class ClientError(Exception):
    """A bad request from a client: answered with `ERR <code> <message>`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def reply(self) -> bytes:
        return err(self.code, self.message)


# ---------------------------------------------------------------------------
# Lines


class LineSplitter:
    """Splits a byte stream into lines of at most `line_bytes_max` bytes.

    A line longer than the bound is reported once as `TOO_LONG` and its bytes
    are dropped up to the next newline, so a client that sends a huge line
    gets one clear error and the connection stays usable. Memory held is at
    most `line_bytes_max` bytes whatever the client sends.
    """

    TOO_LONG = object()

    def __init__(self, line_bytes_max: int) -> None:
        self.line_bytes_max = line_bytes_max
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | object]:
        out: list[bytes | object] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                piece = data[start:nl]
                if len(self._buf) + len(piece) > self.line_bytes_max:
                    out.append(self.TOO_LONG)
                else:
                    if self._buf:
                        piece = bytes(self._buf) + piece
                    out.append(piece[:-1] if piece.endswith(b"\r") else piece)
            self._buf.clear()
            start = nl + 1
        rest = data[start:]
        if not self._discarding and rest:
            if len(self._buf) + len(rest) > self.line_bytes_max:
                out.append(self.TOO_LONG)
                self._buf.clear()
                self._discarding = True
            else:
                self._buf += rest
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


# ---------------------------------------------------------------------------
# Parsing

_JOB_ID = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-[0-9]+\Z")
_SLEEP_MS_MAX = 24 * 3600 * 1000  # a day: larger is surely a typo

HELP_LINES = (
    "SUBMIT [--timeout SECONDS] <shell command>  run a command with /bin/sh -c; replies OK <job-id>",
    "<N>                                         sleep N milliseconds inside the peer (benchmark job)",
    "STATUS <job-id>                             state, attempt, executor, exit code",
    "RESULT <job-id>  (or r<job-id>)             header, then exactly stdout=<n> and stderr=<m> bytes, then a newline",
    "WAIT <job-id> [SECONDS]                     block until the job finishes, then answer as STATUS",
    "CANCEL <job-id>                             cancel a queued or running job (kills its process group)",
    "LIST [N]                                    the latest N jobs submitted here",
    "PEERS                                       every member of the cluster with state and load",
    "STATS                                       this peer's counters, one name=value a line",
    "HELP                                        this text",
    "QUIT                                        close the connection",
)


def split_job_id(job_id: str) -> tuple[str, int]:
    """`n1-42` -> ("n1", 42). The home peer is everything before the last dash."""
    home, _, seq = job_id.rpartition("-")
    return home, int(seq)


def _job_id(args: str, verb: str) -> str:
    job_id = args.strip()
    if not job_id:
        raise ClientError("bad-request", f"{verb} needs a job id, e.g. {verb} n1-1")
    if not _JOB_ID.match(job_id):
        raise ClientError("bad-id", f"{job_id[:64]!r} is not a job id (like n1-42)")
    return job_id


def _seconds(text: str, what: str, limit_s: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ClientError("bad-request", f"{what} must be a number of seconds, not {text[:32]!r}") from None
    if not math.isfinite(value) or value <= 0 or value > limit_s:
        raise ClientError("bad-request", f"{what} must be > 0 and <= {limit_s:g} seconds")
    return value


def parse_command(
    line: bytes, *, command_bytes_max: int, timeout_max_s: float, wait_max_s: float, list_max: int
) -> Command:
    """One line to one command, or `ClientError`. Never raises anything else."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError("encoding", "line is not valid UTF-8") from None
    if "\x00" in text:
        raise ClientError("bad-request", "line contains a NUL byte")
    text = text.strip()
    if not text:
        raise ClientError("bad-request", "empty line; try HELP")
    if text.isdigit() and text.isascii():
        ms = int(text)
        if ms > _SLEEP_MS_MAX:
            raise ClientError("bad-request", f"sleep of {ms} ms is longer than a day")
        return Submit(JobSpec(kind="sleep", sleep_ms=ms))
    verb, _, args = text.partition(" ")
    upper = verb.upper()
    if upper == "SUBMIT":
        return Submit(_parse_submit(args.strip(), command_bytes_max, timeout_max_s))
    if upper == "STATUS":
        return Status(_job_id(args, "STATUS"))
    if upper == "RESULT":
        return Result(_job_id(args, "RESULT"))
    if upper == "WAIT":
        job, _, secs = args.strip().partition(" ")
        timeout = _seconds(secs.strip(), "WAIT timeout", wait_max_s) if secs.strip() else None
        return Wait(_job_id(job, "WAIT"), timeout)
    if upper == "CANCEL":
        return Cancel(_job_id(args, "CANCEL"))
    if upper == "LIST":
        arg = args.strip()
        if not arg:
            return ListJobs(min(20, list_max))
        if not (arg.isdigit() and arg.isascii()) or not 1 <= int(arg) <= list_max:
            raise ClientError("bad-request", f"LIST takes a count from 1 to {list_max}")
        return ListJobs(int(arg))
    if upper in ("PEERS", "STATS", "HELP", "QUIT"):
        if args.strip():
            raise ClientError("bad-request", f"{upper} takes no arguments")
        return {"PEERS": Peers, "STATS": Stats, "HELP": Help, "QUIT": Quit}[upper]()
    if verb == "r" and _JOB_ID.match(args.strip()):
        return Result(args.strip())
    if verb.startswith("r") and not args and _JOB_ID.match(verb[1:]):
        return Result(verb[1:])
    raise ClientError("unknown-command", f"{verb[:32]!r} is not a command; try HELP")


def _parse_submit(args: str, command_bytes_max: int, timeout_max_s: float) -> JobSpec:
    timeout = None
    if args.startswith("--timeout"):
        _, _, rest = args.partition(" ")
        value, _, args = rest.strip().partition(" ")
        timeout = _seconds(value, "--timeout", timeout_max_s)
        args = args.strip()
    if not args:
        raise ClientError("bad-request", "SUBMIT needs a command, e.g. SUBMIT echo hello")
    if len(args.encode()) > command_bytes_max:
        raise ClientError("command-too-long", f"command is longer than {command_bytes_max} bytes")
    return JobSpec(kind="sh", command=args, timeout_s=timeout)


# ---------------------------------------------------------------------------
# Replies


def ok(text: str) -> bytes:
    return f"OK {text}\n".encode()


def err(code: str, message: str) -> bytes:
    return f"ERR {code} {message}\n".encode()


def lines_reply(what: str, lines: list[str]) -> bytes:
    """`OK <k> <what>` followed by exactly k lines."""
    body = "".join(line + "\n" for line in lines)
    return f"OK {len(lines)} {what}\n{body}".encode()


def format_fields(fields: dict[str, object]) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
