"""The client text protocol: lines in, commands out; records in, reply bytes out.

Sans-IO in the manner of h11: `LineSplitter` turns a byte stream into lines
(enforcing the line bound without ever buffering past it), `parse_command`
turns one line into a command object or a `ClientError`, and the `format_*`
functions turn records into reply bytes. Nothing here touches a socket, so the
hypothesis tests can throw arbitrary bytes at it.

Grammar (one command per line, UTF-8, LF or CRLF; see docs/protocol.md)::

    SUBMIT [options] [--] <shell command>        -> OK <job-id>   (options: executor/core/spec.py)
    <N>                                          -> OK <job-id>   (sleep N ms in the peer)
    STATUS <job-id>                              -> OK <job-id> <state> key=value ...
    RESULT <job-id>      |  r<job-id>            -> OK <job-id> <state> exit=.. stdout=<n> stderr=<m> ...
                                                    then n + m bytes and a newline
    TAIL <job-id> [-f]                           -> as RESULT: the output so far (-f: as it comes; docs/protocol.md)
    WAIT <job-id> [SECONDS]                      -> as STATUS once finished, ERR timeout otherwise
    CANCEL <job-id>                              -> OK <job-id> cancelled
    LIST [N] [--state S] [--array ID]            -> OK <k> jobs, then k STATUS lines
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

from dataclasses import dataclass

from executor.core.errors import NOT_HOME_UNKNOWN, ClientError, ErrorCode, err  # noqa: F401 -- names kept here
from executor.core.ids import (  # noqa: F401 -- names kept here
    JOB_ID,
    JOB_ID_CHARS_MAX,
    JOB_SEQ_DIGITS_MAX,
    PEER_ID_CHARS_MAX,
    is_job_id,
    parse_job_id,
    split_job_id,
)
from executor.core.numbers import NumberError, parse_int, parse_seconds
from executor.core.spec import JobSpec, Submit, parse_submit, text_problem

# ---------------------------------------------------------------------------
# Commands


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
class Tail:
    job_id: str
    follow: bool  # -f: stream the output as it is written, until the run ends


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str


@dataclass(frozen=True, slots=True)
class ListJobs:
    count: int
    state: str | None = None  # only jobs in this state
    array: str | None = None  # only the elements of this array (or runs of this periodic job)


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


Command = Submit | Status | Result | Tail | Wait | Cancel | ListJobs | Peers | Stats | Help | Quit


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

_SLEEP_MS_MAX = 24 * 3600 * 1000  # a day: larger is surely a typo


def command_text_problem(command: str) -> str | None:
    """Why `command` may not be a job's command, or None if it may (one
    predicate for the client parser and the peer-frame check, so that a
    command a client got `OK` for can always travel between peers)."""
    return text_problem(command, "command")


HELP_LINES = (
    "SUBMIT [options] [--] <shell command>       run a command with /bin/sh -c; replies OK <job-id>",
    "  options: --timeout S  --retries N [--backoff S]  --priority P (higher first)  --env NAME=VALUE (repeat)",
    "           --cwd DIR  --delay S | --at UNIX_TIME  --keep S  --after ID,..  --after-any ID,..",
    "           --array A-B[%M] (jobs <id>.<i>, at most M at once)  --every S | --cron 'M H DoM Mon DoW' (UTC)",
    "           --slots K (takes K slots)   a value with spaces goes in quotes: --env 'A=hello world'",
    "<N>                                         sleep N milliseconds inside the peer (benchmark job)",
    "STATUS <job-id>                             state, attempt, executor, exit code",
    "RESULT <job-id>  (or r<job-id>)             header, then exactly stdout=<n> and stderr=<m> bytes, then a newline",
    "TAIL <job-id> [-f]                          the output so far, as RESULT; -f: streamed until the run ends",
    "WAIT <job-id> [SECONDS]                     block until the job finishes, then answer as STATUS",
    "CANCEL <job-id>                             cancel a queued or running job (kills its process group)",
    "LIST [N] [--state S] [--array ID]           the latest N jobs submitted here (in state S, of array ID)",
    "PEERS                                       every member of the cluster with state and load",
    "STATS                                       this peer's counters, one name=value a line",
    "HELP                                        this text",
    "QUIT                                        close the connection",
)


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
        return parse_submit(args.strip(), command_bytes_max, timeout_max_s)
    if upper == "STATUS":
        return Status(parse_job_id(args, "STATUS"))
    if upper == "RESULT":
        return Result(parse_job_id(args, "RESULT"))
    if upper == "WAIT":
        job, _, secs = args.strip().partition(" ")
        job_id = parse_job_id(job, "WAIT")
        timeout = parse_seconds(secs.strip(), "WAIT timeout", hi=wait_max_s) if secs.strip() else None
        return Wait(job_id, timeout)
    if upper == "TAIL":
        job, _, flag = args.strip().partition(" ")
        if flag.strip() not in ("", "-f"):
            raise ClientError(ErrorCode.BAD_REQUEST, "TAIL takes <job-id> [-f]")
        return Tail(parse_job_id(job, "TAIL"), flag.strip() == "-f")
    if upper == "CANCEL":
        return Cancel(parse_job_id(args, "CANCEL"))
    if upper == "LIST":
        return _parse_list(args.split(), list_max)
    if upper in ("PEERS", "STATS", "HELP", "QUIT"):
        if args.strip():
            raise ClientError(ErrorCode.BAD_REQUEST, f"{upper} takes no arguments")
        return {"PEERS": Peers, "STATS": Stats, "HELP": Help, "QUIT": Quit}[upper]()
    if verb == "r" and is_job_id(args.strip()):
        return Result(args.strip())
    if verb.startswith("r") and not args and is_job_id(verb[1:]):
        return Result(verb[1:])
    raise ClientError(ErrorCode.UNKNOWN_COMMAND, f"{verb[:32]!r} is not a command; try HELP")


def _parse_list(words: list[str], list_max: int) -> ListJobs:
    """LIST [N] [--state S] [--array ID]"""
    count, options = min(20, list_max), {}
    if words and not words[0].startswith("--"):
        count = parse_int(words.pop(0), "LIST count", lo=1, hi=list_max)
    while words:
        if len(words) < 2 or words[0] not in ("--state", "--array") or words[0] in options:
            raise ClientError(ErrorCode.BAD_REQUEST, "LIST takes [N] [--state STATE] [--array ID]")
        options[words[0]] = words[1]
        del words[:2]
    state = options.get("--state")
    if state is not None and state not in JOB_STATE_NAMES:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--state must be one of {', '.join(JOB_STATE_NAMES)}")
    array = options.get("--array")
    if array is not None:
        array = parse_job_id(array, "LIST --array")
    return ListJobs(count, state, array)


JOB_STATE_NAMES = ("scheduled", "waiting", "queued", "running", "done", "failed", "cancelled")
"""What `--state` may name (executor/core/jobs.py `JobState`, checked by tests/test_jobs.py)."""


# ---------------------------------------------------------------------------
# Replies


def ok(text: str) -> bytes:
    return f"OK {text}\n".encode()


def lines_reply(what: str, lines: list[str]) -> bytes:
    """`OK <k> <what>` followed by exactly k lines (`what` a plural, said
    in the singular for one: `OK 1 peer`)."""
    body = "".join(line + "\n" for line in lines)
    word = what[:-1] if len(lines) == 1 and what.endswith("s") else what
    return f"OK {len(lines)} {word}\n{body}".encode()


def format_fields(fields: dict[str, object]) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
