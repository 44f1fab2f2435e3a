"""The request lines both clients send, built in one place: `submit_line`
(SUBMIT with its options), `list_line` and `wait_line`.

`submit_line` is the only place a Python value becomes a SUBMIT option. It
checks its line by parsing it back with the peer's own parser
(`executor.core.spec.parse_submit`) and comparing what the peer would store
with what was asked for, so the client refuses (with `ValueError`, before
anything is sent) exactly what a peer would refuse, and never sends a line
that a peer would read differently from what the caller meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TypedDict

from executor.core.errors import ClientError
from executor.core.spec import Submit, env_problem, parse_submit, text_problem

_PARSE_COMMAND_BYTES_MAX = 1 << 62
_PARSE_TIMEOUT_MAX_S = 1e9
"""The peer's `command_bytes_max` and `job_timeout_max_s` are its own
configuration, which a client does not know: the round trip leaves those two
bounds to the peer (which answers `ERR command-too-long` / `ERR bad-request`);
1e9 s is the largest real any setting may hold (executor/core/numbers.py)."""

_STATE = re.compile(r"[a-z][a-z-]{0,31}\Z")
"""A state name as LIST's `--state` takes it: one lower-case word. Which
states exist is the peer's to say (it refuses an unknown one), so a newer
peer's state needs no newer client."""

_QUOTES = ("'", '"')


class SubmitOptions(TypedDict, total=False):
    """The keyword options of `submit`/`submit_commands` after `timeout_s`
    (both clients take them as `**options: Unpack[SubmitOptions]` and hand
    them to `submit_line` unchanged; an unknown name is a TypeError there)."""

    retries: int | None
    backoff_s: float | None
    priority: int | None
    env: Mapping[str, str] | None
    cwd: str | None
    delay_s: float | None
    at: float | None
    keep_s: float | None
    after: Iterable[str] | None
    after_any: Iterable[str] | None
    slots: int | None
    array: str | None
    every_s: float | None
    cron: str | None


def _number(value, name: str) -> str:
    """A number as a protocol word: an int as digits, a float as its shortest
    exact decimal without an exponent (`1795944342.216`, not `1.79594e+09`,
    which would move a due time by minutes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, not {value}")
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _integer(value, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return str(value)


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _parse(args: str) -> Submit:
    """SUBMIT's arguments as the peer reads them; its refusal as ValueError
    (a NumberError, itself a ValueError naming the option, passes as it is)."""
    try:
        return parse_submit(args, _PARSE_COMMAND_BYTES_MAX, _PARSE_TIMEOUT_MAX_S)
    except ClientError as exc:
        raise ValueError(exc.message) from None


def _wire(option: str, value: str, read: Callable[[Submit], str], name: str) -> str:
    """`value` as `option`'s value on the wire: as it is when it is one word
    the peer reads back as itself, else in the first of '...' and "..." that
    carries it (the protocol's quotes, without escapes). `read` picks the
    value out of a parsed SUBMIT, so each form is judged by the peer's parser."""
    plain = value != "" and " " not in value and value[:1] not in _QUOTES
    refusal = None
    for form in [value] if plain else [f"'{value}'", f'"{value}"']:
        try:
            if read(_parse(f"{option} {form} true")) == value:
                return form
        except ValueError as exc:
            if "is never closed" not in str(exc):  # the value itself is refused (a bad --cron), not its quoting
                refusal = refusal or exc
    if refusal is not None:
        raise refusal
    raise ValueError(f"{name} cannot be sent: it holds spaces, so it travels in '...' or \"...\" (no escapes), "
                     f"and the quotes inside it would end both")


def _ids(value, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of job ids, not {type(value).__name__}")
    ids = tuple(value)
    if not ids:
        raise ValueError(f"{name} is empty; give at least one job id (or None)")
    for job_id in ids:
        if not isinstance(job_id, str) or not job_id or any(ch in job_id for ch in ", '\""):
            raise ValueError(f"{name}: {str(job_id)[:64]!r} is not a job id (like n1-42)")
    return ids


_SIMPLE_OPTIONS: dict[str, tuple[str, Callable[[object, str], str]]] = {
    # keyword -> (option, how its value is written), in the order they go on the line
    "timeout_s": ("--timeout", _number), "retries": ("--retries", _integer), "backoff_s": ("--backoff", _number),
    "priority": ("--priority", _integer), "slots": ("--slots", _integer), "delay_s": ("--delay", _number),
    "at": ("--at", _number), "keep_s": ("--keep", _number), "every_s": ("--every", _number),
}


def _env_items(env: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of NAME to VALUE, not {type(env).__name__}")
    items = tuple(env.items())
    for name, value in items:
        _text(name, "an env name")
        _text(value, f"env value of {name}")
        problem = env_problem(name, value)
        if problem is not None:
            raise ValueError(problem)
    return items


def submit_line(command: str, timeout_s: float | None = None, *, retries: int | None = None,
                backoff_s: float | None = None, priority: int | None = None, env: Mapping[str, str] | None = None,
                cwd: str | None = None, delay_s: float | None = None, at: float | None = None,
                keep_s: float | None = None, after: Iterable[str] | None = None,
                after_any: Iterable[str] | None = None, slots: int | None = None, array: str | None = None,
                every_s: float | None = None, cron: str | None = None) -> str:
    """The `SUBMIT [options] [--] <command>` line for one shell command.

    `timeout_s`: run time limit. `retries`: re-runs after a failed try (not
    after a cancel), `backoff_s` the base of the wait between them (needs
    `retries`). `priority`: higher starts first (default 0). `env`: NAME ->
    VALUE for the job's environment. `cwd`: its working directory on the
    executor. `delay_s` or `at` (a unix time, not both): not queued before.
    `keep_s`: how long the finished record and output are kept. `after`:
    job ids that must all be `done` first; `after_any`: ids that must all be
    final, whatever their state. `slots`: how many of a peer's slots the job
    takes. At most one of `array` (`"A-B"` or `"A-B%M"`: jobs `<id>.<i>`),
    `every_s` and `cron` (a periodic job: runs `<id>.<k>`).

    A value with spaces (an `env` value, a `cwd`, a `cron` expression)
    travels in the protocol's quotes, '...' or "..." (no escapes); one that
    holds quotes that would end both is refused with ValueError. So is a
    command of several lines, and anything a peer would refuse
    (`retries=-1`, a priority out of range, `backoff_s` without `retries`,
    an id that is not a job id, ...; the message names the option). None
    leaves an option to the peer's default.
    """
    _text(command, "command")
    if "\n" in command or "\r" in command:
        raise ValueError("a command is one line (no newline); submit several with submit_commands")
    given = {"timeout_s": timeout_s, "retries": retries, "backoff_s": backoff_s, "priority": priority,
             "slots": slots, "delay_s": delay_s, "at": at, "keep_s": keep_s, "every_s": every_s}
    words = ["SUBMIT"]
    for name, (option, form) in _SIMPLE_OPTIONS.items():
        if given[name] is not None:
            words += [option, form(given[name], name)]
    env_items = _env_items(env)
    for name, value in env_items:
        words += ["--env", _wire("--env", f"{name}={value}", lambda s: "=".join(s.spec.env[0]), f"env value of {name}")]
    if cwd is not None:
        problem = text_problem(_text(cwd, "cwd"), "--cwd directory")
        if problem is not None:
            raise ValueError(problem)
        words += ["--cwd", _wire("--cwd", cwd, lambda s: s.spec.cwd, "cwd")]
    after_ids = _ids(after, "after") if after is not None else ()
    after_any_ids = _ids(after_any, "after_any") if after_any is not None else ()
    if after_ids:
        words += ["--after", ",".join(after_ids)]
    if after_any_ids:
        words += ["--after-any", ",".join(after_any_ids)]
    if array is not None:
        if not _text(array, "array") or any(ch in array for ch in " '\""):
            raise ValueError(f"array {array[:32]!r} is not A-B or A-B%M (like '1-10' or '0-99%5')")
        words += ["--array", array]
    if cron is not None:
        words += ["--cron", _wire("--cron", _text(cron, "cron"), lambda s: s.cron, "cron")]
    if command.lstrip().startswith("-"):
        words.append("--")  # the command's first word would read as an option
    line = " ".join(words) + " " + command

    parsed = _parse(line[len("SUBMIT "):])
    spec = parsed.spec
    meant = (command.strip(), env_items, cwd or "", after_ids, after_any_ids, cron)
    read = (spec.command, spec.env, spec.cwd, spec.after, spec.after_any, parsed.cron)
    if read != meant:  # the guard for "quotes nothing wrongly": never reached by a value the checks above let by
        raise ValueError(f"the SUBMIT line would not reach the peer as meant: {line[:200]!r}")
    return line


def wait_line(job_id: str, timeout_s: float | None) -> str:
    return f"WAIT {job_id}" + (f" {_number(max(timeout_s, 0.001), 'timeout_s')}" if timeout_s is not None else "")


def list_line(count: int, state: str | None = None, array: str | None = None) -> str:
    """`LIST <count> [--state S] [--array ID]`: the latest `count` jobs of the
    peer; only those in `state`, only the children of the array or periodic
    job `array`, when given (the peer filters)."""
    line = f"LIST {_integer(count, 'count')}"
    if state is not None:
        if not isinstance(state, str) or not _STATE.match(state):
            raise ValueError(f"state {str(state)[:32]!r} is not a state name (queued, running, done, ...)")
        line += f" --state {state}"
    if array is not None:
        _ids([array], "array")
        line += f" --array {array}"
    return line
