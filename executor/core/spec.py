"""What a job is (`JobSpec`) and SUBMIT's options: one grammar, one check.

    SUBMIT [--timeout S] [--retries N] [--backoff S] [--priority P]
           [--env NAME=VALUE]... [--cwd DIR] [--delay S | --at UNIX_TIME]
           [--keep S] [--after ID[,ID...]] [--after-any ID[,ID...]]
           [--array A-B[%M] | --every S | --cron EXPR] [--slots K] [--] <command>

Options come before the command, in any order; the first word that is not an
option (or the word after `--`) starts the command, which runs as written.
An option's value is one word, or several in matching quotes ('...' or
"...", no escapes): `--env 'GREETING=hello world'`, `--cron '*/5 * * * *'`.
Every range below is a named bound; a malformed option is `ERR bad-request`
naming the option, and nothing is stored (the parser has no state).

`spec_problem` is the one check of a spec's free text (command, environment,
directory) for every door: the client parser here and the peer-frame check
(executor/edge/link_checks.py), so a job a client got `OK` for can always
travel between peers and nothing a peer sends can smuggle a control
character into a job's process.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from cronsim import CronSim, CronSimError

from executor.core.errors import ClientError, ErrorCode
from executor.core.ids import is_job_id
from executor.core.numbers import parse_float, parse_int, parse_seconds

PRIORITY_MAX = 1_000
"""Priorities run from -PRIORITY_MAX to PRIORITY_MAX; higher starts first."""
RETRIES_MAX = 100
"""At most this many re-runs after the first try."""
BACKOFF_MAX_S = 24 * 3600.0
"""The largest `--backoff` base (the wait before each retry is also capped by
the peer's `retry_backoff_max_s`)."""
SLOTS_MAX = 1024
"""The most slots one job may take (`--slots`)."""
ENV_ENTRIES_MAX = 64
DEPENDENCIES_MAX = 64
"""Ids in `--after` and `--after-any` together."""
DELAY_MAX_S = 366 * 24 * 3600.0
"""The furthest a job may be put off (`--delay`, or `--at` from now)."""
KEEP_MAX_S = 366 * 24 * 3600.0
ARRAY_ELEMENTS_MAX = 10_000
"""Elements of one `--array` (each is a job record at its home)."""
ARRAY_INDEX_MAX = 10 ** 9 - 1  # executor/core/ids.py CHILD_INDEX_DIGITS_MAX
EVERY_MIN_S = 1.0
"""The shortest `--every` period."""
AT_MAX = 2.0 ** 34
"""The largest `--at` (a unix time, in the year 2514): larger is a typo."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_RESERVED_ENV_PREFIX = "PEERJOBS_"  # set by the peer for every job (docs/usage.md)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run. `kind` is "sh" (a /bin/sh -c command) or "sleep" (an
    in-peer sleep of `sleep_ms`, no process: the seed's benchmark job).

    `priority`, `env` and `cwd` travel with the job to whichever peer runs
    it; `retries`, `backoff_s`, `keep_s` and the dependencies are the home's
    business only (they are kept in the home's record)."""

    kind: str
    command: str = ""
    sleep_ms: int = 0
    timeout_s: float | None = None  # None: the peer's default
    priority: int = 0
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    retries: int = 0
    backoff_s: float = 0.0
    keep_s: float | None = None  # None: the peer's `records_retained_s`
    after: tuple[str, ...] = ()  # afterok: every one must be done
    after_any: tuple[str, ...] = ()  # afterany: every one must be final
    slots: int = 1  # how many of a peer's slots it takes; loads count slots

    @property
    def tries(self) -> int:
        return self.retries + 1

    @property
    def dependencies(self) -> tuple[str, ...]:
        return self.after + self.after_any

    def options_wire(self) -> dict | None:
        """The options that differ from the defaults, for a durable record
        or a held copy (None when there are none: a plain job's bytes stay
        as they were)."""
        out = {}
        if self.priority:
            out["p"] = self.priority
        if self.env:
            out["env"] = [list(pair) for pair in self.env]
        if self.cwd:
            out["cwd"] = self.cwd
        if self.retries:
            out["rt"] = self.retries
        if self.backoff_s:
            out["bo"] = self.backoff_s
        if self.keep_s is not None:
            out["keep"] = self.keep_s
        if self.after:
            out["af"] = list(self.after)
        if self.after_any:
            out["aa"] = list(self.after_any)
        if self.slots != 1:
            out["sl"] = self.slots
        return out or None


def spec_from_wire(kind: str, command: str, sleep_ms: int, timeout_s: float | None, options: dict | None) -> JobSpec:
    if not options:
        return JobSpec(kind, command, sleep_ms, timeout_s)
    return JobSpec(
        kind, command, sleep_ms, timeout_s, options.get("p", 0),
        tuple((name, value) for name, value in options.get("env", ())), options.get("cwd", ""),
        options.get("rt", 0), options.get("bo", 0.0), options.get("keep"),
        tuple(options.get("af", ())), tuple(options.get("aa", ())), options.get("sl", 1),
    )


def text_problem(text: str, what: str) -> str | None:
    """Why `text` may not be a job's `what`, or None if it may: no C0 control
    character except TAB, and no DEL. CR in particular is refused rather than
    carried: the text protocol is line-based, a peer link refuses it, and a
    terminal showing `echo a\\rb` would hide the `echo a`."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    return (f"{what} contains a control character (U+{ord(found.group()):04X}); "
            f"a {what} is one line of printable text (TAB allowed)")


def env_problem(name: str, value: str) -> str | None:
    if not _ENV_NAME.match(name):
        return f"--env name {name[:32]!r} is not a variable name (letters, digits, _; not first a digit)"
    if name.startswith(_RESERVED_ENV_PREFIX):
        return f"--env {name}: names starting with {_RESERVED_ENV_PREFIX} are set by the peer"
    return text_problem(value, "--env value")


def spec_problem(spec: JobSpec) -> str | None:
    """Why `spec`'s free text may not run, or None: the one check for the
    client parser and the peer-frame check."""
    problem = text_problem(spec.command, "command") or text_problem(spec.cwd, "--cwd directory")
    if problem is None and len(spec.env) > ENV_ENTRIES_MAX:
        problem = f"more than {ENV_ENTRIES_MAX} --env entries"
    for name, value in spec.env:
        problem = problem or env_problem(name, value)
    if problem is None and not -PRIORITY_MAX <= spec.priority <= PRIORITY_MAX:
        problem = f"--priority must be within ±{PRIORITY_MAX}"
    if problem is None and not 1 <= spec.slots <= SLOTS_MAX:
        problem = f"--slots must be from 1 to {SLOTS_MAX}"
    return problem


@dataclass(frozen=True, slots=True)
class Submit:
    spec: JobSpec
    delay_s: float | None = None  # --delay: due this long after it is accepted
    at: float | None = None  # --at: due at this unix time
    array: tuple[int, int, int] | None = None  # --array A-B%M: (A, B, M; 0: no cap)
    every_s: float | None = None  # --every: a periodic job's period
    cron: str | None = None  # --cron: a periodic job's schedule (UTC)


def parse_submit(args: str, command_bytes_max: int, timeout_max_s: float) -> Submit:
    """SUBMIT's arguments (after the verb) to a `Submit`, or `ClientError`."""
    if not args.startswith("-"):  # no options: the common case, kept cheap
        problem = text_problem(_command(args, command_bytes_max), "command")
        if problem is not None:
            raise ClientError(ErrorCode.BAD_REQUEST, problem)
        return Submit(JobSpec("sh", args))
    opts: dict = {}
    env: list[tuple[str, str]] = []
    words = args.split(" ")
    i = 0
    while i < len(words):
        word = words[i]
        if word == "":
            i += 1
            continue
        if word == "--":
            i += 1
            break
        if not word.startswith("--"):
            break
        name, eq, value = word.partition("=")
        if not eq:
            j = i + 1
            while j < len(words) and words[j] == "":
                j += 1
            if j >= len(words):
                raise ClientError(ErrorCode.BAD_REQUEST, f"{name[:32]} needs a value")
            value, i = words[j], j
        if value[:1] in ("'", '"'):
            value, i = _quoted(words, i, value, name)
        i += 1
        if name == "--env":
            key, has_eq, val = value.partition("=")
            if not has_eq:
                raise ClientError(ErrorCode.BAD_REQUEST, f"--env takes NAME=VALUE, not {value[:32]!r}")
            env.append((key, val))
            continue
        if name in opts:
            raise ClientError(ErrorCode.BAD_REQUEST, f"{name} given twice")
        opts[name] = _option(name, value, timeout_max_s)
    command = _command(" ".join(words[i:]).strip(), command_bytes_max)
    if "--delay" in opts and "--at" in opts:
        raise ClientError(ErrorCode.BAD_REQUEST, "give --delay or --at, not both")
    if len({"--array", "--every", "--cron"} & set(opts)) > 1:
        raise ClientError(ErrorCode.BAD_REQUEST, "give one of --array, --every and --cron")
    if "--backoff" in opts and "--retries" not in opts:
        raise ClientError(ErrorCode.BAD_REQUEST, "--backoff needs --retries")
    after, after_any = opts.get("--after", ()), opts.get("--after-any", ())
    if len(after) + len(after_any) > DEPENDENCIES_MAX:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--after and --after-any name more than {DEPENDENCIES_MAX} jobs")
    spec = JobSpec(
        "sh", command, 0, opts.get("--timeout"), opts.get("--priority", 0), tuple(env), opts.get("--cwd", ""),
        opts.get("--retries", 0), opts.get("--backoff", 0.0), opts.get("--keep"), after, after_any,
        opts.get("--slots", 1),
    )
    problem = spec_problem(spec)
    if problem is not None:
        raise ClientError(ErrorCode.BAD_REQUEST, problem)
    return Submit(spec, opts.get("--delay"), opts.get("--at"), opts.get("--array"), opts.get("--every"),
                  opts.get("--cron"))


def _command(command: str, command_bytes_max: int) -> str:
    """The command, if there is one and it fits (its text is `spec_problem`'s)."""
    if not command:
        raise ClientError(ErrorCode.BAD_REQUEST, "SUBMIT needs a command, e.g. SUBMIT echo hello")
    if len(command.encode()) > command_bytes_max:
        raise ClientError(ErrorCode.COMMAND_TOO_LONG, f"command is longer than {command_bytes_max} bytes")
    return command


def _option(name: str, value: str, timeout_max_s: float):
    if name == "--timeout":
        return parse_seconds(value, "--timeout", hi=timeout_max_s)
    if name == "--retries":
        return parse_int(value, "--retries", lo=0, hi=RETRIES_MAX)
    if name == "--backoff":
        return parse_float(value, "--backoff", lo=0.0, hi=BACKOFF_MAX_S, unit="s")
    if name == "--slots":
        return parse_int(value, "--slots", lo=1, hi=SLOTS_MAX)
    if name == "--priority":
        return parse_int(value, "--priority", lo=-PRIORITY_MAX, hi=PRIORITY_MAX)
    if name == "--cwd":
        return value
    if name == "--delay":
        return parse_float(value, "--delay", lo=0.0, hi=DELAY_MAX_S, unit="s")
    if name == "--at":
        return parse_float(value, "--at", lo=0.0, hi=AT_MAX)
    if name == "--keep":
        return parse_seconds(value, "--keep", hi=KEEP_MAX_S)
    if name == "--array":
        return _parse_array(value)
    if name == "--cron":
        return _parse_cron(value)
    if name == "--every":
        return parse_float(value, "--every", lo=EVERY_MIN_S, hi=DELAY_MAX_S, unit="s")
    if name in ("--after", "--after-any"):
        ids = tuple(value.split(","))
        for job_id in ids:
            if not is_job_id(job_id):
                raise ClientError(ErrorCode.BAD_REQUEST, f"{name}: {job_id[:64]!r} is not a job id (like n1-42)")
        if len(set(ids)) != len(ids):
            raise ClientError(ErrorCode.BAD_REQUEST, f"{name} names a job twice")
        if len(ids) > DEPENDENCIES_MAX:
            raise ClientError(ErrorCode.BAD_REQUEST, f"{name} names more than {DEPENDENCIES_MAX} jobs")
        return ids
    raise ClientError(ErrorCode.BAD_REQUEST, f"unknown SUBMIT option {name[:32]!r}; try HELP")



def _parse_array(value: str) -> tuple[int, int, int]:
    """`A-B[%M]` -> (A, B, M), M = 0 for no cap."""
    span, pct, cap_text = value.partition("%")
    first_text, dash, last_text = span.partition("-")
    if not dash:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--array takes A-B[%M], like 1-10 or 0-99%5, not {value[:32]!r}")
    first = parse_int(first_text, "--array's first index", lo=0, hi=ARRAY_INDEX_MAX)
    last = parse_int(last_text, "--array's last index", lo=0, hi=ARRAY_INDEX_MAX)
    if last < first:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--array {first}-{last}: the last index is below the first")
    if last - first + 1 > ARRAY_ELEMENTS_MAX:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--array {first}-{last}: more than {ARRAY_ELEMENTS_MAX} elements")
    cap = parse_int(cap_text, "--array's %M (elements at once)", lo=1, hi=ARRAY_ELEMENTS_MAX) if pct else 0
    return first, last, cap


def _quoted(words: list[str], i: int, first: str, name: str) -> tuple[str, int]:
    """A quoted value that starts in `words[i]`: (the value, the index of its last word)."""
    quote, parts = first[0], [first[1:]]
    j = i
    while not (parts[-1].endswith(quote) and (j > i or len(first) > 1)):
        j += 1
        if j >= len(words):
            raise ClientError(ErrorCode.BAD_REQUEST, f"{name[:32]}: the value's {quote} is never closed")
        parts.append(words[j])
    return " ".join(parts)[:-1], j


CRON_CHARS_MAX = 256


def next_cron(expr: str, after: float) -> float:
    """The first time matching `expr` (UTC) strictly after the unix time `after`."""
    start = datetime.fromtimestamp(math.floor(after), timezone.utc)
    return next(CronSim(expr, start)).timestamp()


def _parse_cron(value: str) -> str:
    if len(value) > CRON_CHARS_MAX:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--cron is longer than {CRON_CHARS_MAX} characters")
    try:
        next_cron(value, 0.0)
    except (CronSimError, StopIteration) as exc:
        raise ClientError(ErrorCode.BAD_REQUEST, f"--cron {value[:64]!r}: {exc or 'never matches'}") from None
    return value
