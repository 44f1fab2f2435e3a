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

import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TypedDict

from executor.core.errors import ClientError
from executor.core.spec import env_problem, parse_submit

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


def _number(value, name: str) -> str:
    """A number as a protocol word: an int as digits, a float as its shortest
    exact decimal without an exponent (`1795944342.216`, not `1.79594e+09`,
    which would move a due time by minutes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value}")
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _integer(value, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return str(value)


def _word(value: str, name: str) -> str:
    """A free-text option value: one word, since the protocol ends an
    option's value at the first space (there is no quoting)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{name} {value[:64]!r} holds whitespace; an option's value is one word "
                         f"(the protocol ends it at the first space and has no quoting)")
    return value


def _ids(value, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of job ids, not {type(value).__name__}")
    ids = tuple(value)
    if not ids:
        raise ValueError(f"{name} is empty; give at least one job id (or None)")
    for job_id in ids:
        _word(job_id, name)
        if "," in job_id:
            raise ValueError(f"{name}: {job_id[:64]!r} is not a job id (like n1-42)")
    return ids


def submit_line(command: str, timeout_s: float | None = None, *, retries: int | None = None,
                backoff_s: float | None = None, priority: int | None = None, env: Mapping[str, str] | None = None,
                cwd: str | None = None, delay_s: float | None = None, at: float | None = None,
                keep_s: float | None = None, after: Iterable[str] | None = None,
                after_any: Iterable[str] | None = None) -> str:
    """The `SUBMIT [options] [--] <command>` line for one shell command.

    `timeout_s`: run time limit. `retries`: re-runs after a failed try (not
    after a cancel), `backoff_s` the base of the wait between them (needs
    `retries`). `priority`: higher starts first (default 0). `env`: NAME ->
    VALUE for the job's environment. `cwd`: its working directory on the
    executor. `delay_s` or `at` (a unix time, not both): not queued before.
    `keep_s`: how long the finished record and output are kept. `after`:
    job ids that must all be `done` first; `after_any`: ids that must all be
    final, whatever their state.

    An option's value is one word on the wire (the protocol ends it at the
    first space and has no quoting), so an `env` value or a `cwd` holding
    whitespace is refused here with ValueError; so is a command of several
    lines, and anything a peer would refuse (`retries=-1`, a priority out of
    range, `--backoff` without `--retries`, an id that is not a job id, ...;
    the message names the option). None leaves an option to the peer's default.
    """
    if not isinstance(command, str):
        raise TypeError(f"command must be a str, not {type(command).__name__}")
    if "\n" in command or "\r" in command:
        raise ValueError("a command is one line (no newline); submit several with submit_commands")
    words = ["SUBMIT"]
    if timeout_s is not None:
        words += ["--timeout", _number(timeout_s, "timeout_s")]
    if retries is not None:
        words += ["--retries", _integer(retries, "retries")]
    if backoff_s is not None:
        words += ["--backoff", _number(backoff_s, "backoff_s")]
    if priority is not None:
        words += ["--priority", _integer(priority, "priority")]
    env_items: tuple[tuple[str, str], ...] = ()
    if env is not None:
        if not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping of NAME to VALUE, not {type(env).__name__}")
        env_items = tuple(env.items())
        for name, value in env_items:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"env names and values must be str, not {type(name).__name__}: "
                                f"{type(value).__name__}")
            problem = env_problem(name, value)
            if problem is not None:
                raise ValueError(problem)
            words += ["--env", f"{name}={_word(value, f'env value of {name}')}"]
    if cwd is not None:
        words += ["--cwd", _word(cwd, "cwd")]
    if delay_s is not None:
        words += ["--delay", _number(delay_s, "delay_s")]
    if at is not None:
        words += ["--at", _number(at, "at")]
    if keep_s is not None:
        words += ["--keep", _number(keep_s, "keep_s")]
    after_ids = _ids(after, "after") if after is not None else ()
    after_any_ids = _ids(after_any, "after_any") if after_any is not None else ()
    if after_ids:
        words += ["--after", ",".join(after_ids)]
    if after_any_ids:
        words += ["--after-any", ",".join(after_any_ids)]
    if command.lstrip().startswith("-"):
        words.append("--")  # the command's first word would read as an option
    line = " ".join(words) + " " + command

    try:  # a NumberError (a ValueError naming the option) passes through as it is
        parsed = parse_submit(line[len("SUBMIT "):], _PARSE_COMMAND_BYTES_MAX, _PARSE_TIMEOUT_MAX_S)
    except ClientError as exc:
        raise ValueError(exc.message) from None
    spec = parsed.spec
    meant = (command.strip(), env_items, cwd or "", after_ids, after_any_ids)
    read = (spec.command, spec.env, spec.cwd, spec.after, spec.after_any)
    if read != meant:  # the guard for "quotes nothing wrongly": never reached by a value the checks above let by
        raise ValueError(f"the SUBMIT line would not reach the peer as meant: {line[:200]!r}")
    return line


def wait_line(job_id: str, timeout_s: float | None) -> str:
    return f"WAIT {job_id}" + (f" {_number(max(timeout_s, 0.001), 'timeout_s')}" if timeout_s is not None else "")


def list_line(count: int, state: str | None = None) -> str:
    """`LIST <count> [--state S]`: the latest `count` jobs of the peer, only
    those in `state` when given (filtered by the peer)."""
    line = f"LIST {_integer(count, 'count')}"
    if state is not None:
        if not isinstance(state, str) or not _STATE.match(state):
            raise ValueError(f"state {str(state)[:32]!r} is not a state name (queued, running, done, ...)")
        line += f" --state {state}"
    return line
