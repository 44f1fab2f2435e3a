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

Three definitions here are shared by every door, so that no door accepts
what another refuses: what a job id is (`is_job_id`, also used by the peer
frame check in executor/edge/links.py and the HTTP paths in executor/edge/http.py),
what a command may hold (`command_text_problem`, also used by the peer frame
check), and, through executor/core/numbers.py, what a number is. A last line
without a newline is returned by `LineSplitter.finish` at EOF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from executor.core.errors import NOT_HOME_UNKNOWN, ClientError, ErrorCode, err  # noqa: F401 -- names kept here
from executor.core.numbers import NumberError, parse_int, parse_seconds

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

    def finish(self) -> list[bytes | object]:
        """The stream ended (EOF): the last line, if it had no newline.

        `printf 'SUBMIT echo x' | nc HOST PORT` sends a line and no `\\n`;
        it is a request like any other and gets its answer. Returns `[line]`
        (a trailing CR dropped, as `feed` does), or `[]` when nothing is
        pending — including when the pending bytes belong to a line already
        reported as `TOO_LONG`. The splitter is empty afterwards."""
        line = bytes(self._buf)
        discarding = self._discarding
        self._buf.clear()
        self._discarding = False
        if discarding or not line:
            return []
        return [line[:-1] if line.endswith(b"\r") else line]

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


# ---------------------------------------------------------------------------
# Parsing
#
# What a job id and a command may be: ONE definition each, used by this
# parser (client lines), executor/edge/links.py (peer frames) and executor/edge/http.py
# (URL paths), so that no door accepts what another refuses.

PEER_ID_CHARS_MAX = 64
"""Longest peer name (executor/settings.py `parse_name`, gossip's peer ids)."""

JOB_SEQ_DIGITS_MAX = 18
"""Digits of a job's sequence number: 10**18 jobs is more than any peer will
issue, and it fits a signed 64-bit integer (CBOR, LevelDB keys), so turning
it into an int is always cheap and never hits Python's digit limit."""

JOB_ID_CHARS_MAX = PEER_ID_CHARS_MAX + 1 + JOB_SEQ_DIGITS_MAX

JOB_ID = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-[0-9]{1,%d}\Z" % JOB_SEQ_DIGITS_MAX)
"""`<home peer>-<sequence>`: the home is letters, digits, `_`, `.` and inner
dashes; the sequence ASCII digits. Only ever matched after the length check
of `is_job_id`, so the regex never scans more than `JOB_ID_CHARS_MAX`."""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_SLEEP_MS_MAX = 24 * 3600 * 1000  # a day: larger is surely a typo


def is_job_id(text: str) -> bool:
    """Whether `text` is a well-formed job id (never raises, whatever the input)."""
    return type(text) is str and len(text) <= JOB_ID_CHARS_MAX and JOB_ID.match(text) is not None


def command_text_problem(command: str) -> str | None:
    """Why `command` may not be a job's command, or None if it may.

    A command is one line of text: no C0 control character except TAB, and
    no DEL. CR in particular is refused rather than carried: the text
    protocol is line-based, a peer link refuses it, and a terminal showing
    `echo a\\rb` would hide the `echo a`. One predicate for the client
    parser and the peer-frame check, so that a command a client got `OK`
    for can always travel between peers (docs/protocol.md)."""
    found = _CONTROL.search(command)
    if found is None:
        return None
    return (f"command contains a control character (U+{ord(found.group()):04X}); "
            f"a command is one line of printable text (TAB allowed)")

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
    """`n1-42` -> ("n1", 42). The home peer is everything before the last dash.

    Total: a sequence that is not 1 to `JOB_SEQ_DIGITS_MAX` ASCII digits
    gives 0, a number no peer issues (sequences start at 1), so whatever
    reaches here unchecked sorts first and is found nowhere, and nothing
    raises."""
    home, _, seq = job_id.rpartition("-")
    if not (0 < len(seq) <= JOB_SEQ_DIGITS_MAX and seq.isascii() and seq.isdigit()):
        return home, 0
    return home, int(seq)


def parse_job_id(text: str, verb: str) -> str:
    """A job id from a client, or `ClientError` (`bad-request` when missing,
    `bad-id` when malformed)."""
    job_id = text.strip()
    if not job_id:
        raise ClientError(ErrorCode.BAD_REQUEST, f"{verb} needs a job id, e.g. {verb} n1-1")
    if not is_job_id(job_id):
        shown = job_id[:64] + ("..." if len(job_id) > 64 else "")
        raise ClientError(ErrorCode.BAD_ID, f"{shown!r} is not a job id (like n1-42; at most "
                                    f"{JOB_SEQ_DIGITS_MAX} digits after the last dash)")
    return job_id


def _bad_number(exc: NumberError) -> ClientError:
    return ClientError(ErrorCode.BAD_REQUEST, str(exc))


def parse_command(
    line: bytes, *, command_bytes_max: int, timeout_max_s: float, wait_max_s: float, list_max: int
) -> Command:
    """One line to one command, or `ClientError`. Never raises anything else."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(ErrorCode.ENCODING, "line is not valid UTF-8") from None
    if "\x00" in text:
        raise ClientError(ErrorCode.BAD_REQUEST, "line contains a NUL byte")
    text = text.strip()
    if not text:
        raise ClientError(ErrorCode.BAD_REQUEST, "empty line; try HELP")
    try:
        return _parse_text(text, command_bytes_max, timeout_max_s, wait_max_s, list_max)
    except NumberError as exc:
        raise _bad_number(exc) from None


def _parse_text(text: str, command_bytes_max: int, timeout_max_s: float, wait_max_s: float,
                list_max: int) -> Command:
    if text.isascii() and text.isdigit():
        ms = parse_int(text, "a sleep job's milliseconds (a bare number)", lo=0, hi=_SLEEP_MS_MAX)
        return Submit(JobSpec(kind="sleep", sleep_ms=ms))
    verb, _, args = text.partition(" ")
    upper = verb.upper()
    if upper == "SUBMIT":
        return Submit(_parse_submit(args.strip(), command_bytes_max, timeout_max_s))
    if upper == "STATUS":
        return Status(parse_job_id(args, "STATUS"))
    if upper == "RESULT":
        return Result(parse_job_id(args, "RESULT"))
    if upper == "WAIT":
        job, _, secs = args.strip().partition(" ")
        job_id = parse_job_id(job, "WAIT")
        timeout = parse_seconds(secs.strip(), "WAIT timeout", hi=wait_max_s) if secs.strip() else None
        return Wait(job_id, timeout)
    if upper == "CANCEL":
        return Cancel(parse_job_id(args, "CANCEL"))
    if upper == "LIST":
        arg = args.strip()
        if not arg:
            return ListJobs(min(20, list_max))
        return ListJobs(parse_int(arg, "LIST count", lo=1, hi=list_max))
    if upper in ("PEERS", "STATS", "HELP", "QUIT"):
        if args.strip():
            raise ClientError(ErrorCode.BAD_REQUEST, f"{upper} takes no arguments")
        return {"PEERS": Peers, "STATS": Stats, "HELP": Help, "QUIT": Quit}[upper]()
    if verb == "r" and is_job_id(args.strip()):
        return Result(args.strip())
    if verb.startswith("r") and not args and is_job_id(verb[1:]):
        return Result(verb[1:])
    raise ClientError(ErrorCode.UNKNOWN_COMMAND, f"{verb[:32]!r} is not a command; try HELP")


def _parse_submit(args: str, command_bytes_max: int, timeout_max_s: float) -> JobSpec:
    timeout = None
    if args.startswith("--timeout"):
        _, _, rest = args.partition(" ")
        value, _, args = rest.strip().partition(" ")
        timeout = parse_seconds(value, "--timeout", hi=timeout_max_s)
        args = args.strip()
    if not args:
        raise ClientError(ErrorCode.BAD_REQUEST, "SUBMIT needs a command, e.g. SUBMIT echo hello")
    if len(args.encode()) > command_bytes_max:
        raise ClientError(ErrorCode.COMMAND_TOO_LONG, f"command is longer than {command_bytes_max} bytes")
    problem = command_text_problem(args)
    if problem is not None:
        raise ClientError(ErrorCode.BAD_REQUEST, problem)
    return JobSpec(kind="sh", command=args, timeout_s=timeout)


# ---------------------------------------------------------------------------
# Replies


def ok(text: str) -> bytes:
    return f"OK {text}\n".encode()


def lines_reply(what: str, lines: list[str]) -> bytes:
    """`OK <k> <what>` followed by exactly k lines."""
    body = "".join(line + "\n" for line in lines)
    return f"OK {len(lines)} {what}\n{body}".encode()


def format_fields(fields: dict[str, object]) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
