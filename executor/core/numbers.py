"""Numbers from text: the one place a string a stranger wrote becomes a number.

Every number that arrives as text — a client line (`LIST 5`, `WAIT n1-1 30`,
`SUBMIT --timeout 2.5`, a bare `250`), an HTTP query (`?limit=`), a config
file, an environment variable or a flag — goes through `parse_int` or
`parse_seconds`. Both are total: they return a number inside the caller's
bounds or raise `NumberError` (a `ValueError`) whose message names the
field, and nothing else.

Why one parser with a digit bound checked *before* converting: Python's
`int(str)` refuses strings of more than 4,300 digits by raising `ValueError`
(CVE-2020-10735's guard), and before that limit converting is quadratic in
the length; `float(str)` turns `1e999` into `inf` and accepts `nan`,
`infinity`, `1_0`, surrounding spaces and non-ASCII digits (`float('٣')` is
3.0). Each of those reached a place that did not expect it. Here the grammar
is ASCII digits only, the length is bounded by `NUMBER_CHARS_MAX`, and the
value by the caller's `lo`/`hi`, so no input can cost more than a few dozen
character comparisons or produce an infinite, NaN or out-of-range value.

Sans-IO and dependency-free: the protocol, the HTTP edge and the settings
loader all import it.
"""

from __future__ import annotations

import math
import re

NUMBER_CHARS_MAX = 32
"""Longest text accepted as a number, sign and decimals included. Every
bound of peerjobs fits in 19 digits (2**63); 32 leaves room for leading
zeros and decimals (`0003600.000`), and caps what a conversion may cost."""

_INT = re.compile(r"[+-]?[0-9]+\Z")
# A decimal with an optional exponent: the forms `executor.client` sends
# (`{:g}` gives `1e+06`) and people type. No sign (seconds are never
# negative), no `nan`/`inf` words, no `_`, no spaces, ASCII digits only.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?\Z")


class NumberError(ValueError):
    """Text that is not a number inside its bounds; the message says why."""


def _show(text: str) -> str:
    """The text for an error message: short, quoted, control characters escaped."""
    return repr(text[:24] + ("..." if len(text) > 24 else ""))


def parse_int(text, what: str, *, lo: int, hi: int) -> int:
    """`text` (a str, or an int from a TOML file) as an integer in [lo, hi].

    Accepts an optional sign and ASCII digits, at most `NUMBER_CHARS_MAX`
    characters, checked before any conversion. Raises `NumberError`."""
    if type(text) is int:  # a TOML integer: already a number, only the range to check
        value = text
    else:
        if not isinstance(text, str):
            raise NumberError(f"{what} must be an integer, not {type(text).__name__}")
        if len(text) > NUMBER_CHARS_MAX:
            raise NumberError(f"{what} has more than {NUMBER_CHARS_MAX} characters; it must be from {lo} to {hi}")
        if not _INT.match(text):
            raise NumberError(f"{what} must be an integer from {lo} to {hi}, not {_show(text)}")
        value = int(text)
    if not lo <= value <= hi:
        raise NumberError(f"{what} must be from {lo} to {hi}")
    return value


def parse_float(text, what: str, *, lo: float, hi: float, lo_inclusive: bool = True, unit: str = "") -> float:
    """`text` (a str, or an int/float from a TOML file) as a finite number in
    [lo, hi] (or (lo, hi] without `lo_inclusive`); `unit` for the messages.

    Accepts `30`, `2.5`, `.5`, `1e+06`; refuses signs, `nan`, `inf`, spaces,
    `_`, non-ASCII digits and anything longer than `NUMBER_CHARS_MAX`
    characters, before converting. Raises `NumberError`."""
    span = f"{'>=' if lo_inclusive else '>'} {lo:g} and <= {hi:g}{' ' + unit if unit else ''}"
    if type(text) is int and abs(text) > 2**63:  # a TOML integer too large for a float to hold exactly
        raise NumberError(f"{what} must be {span}")
    if type(text) in (int, float):  # a TOML number
        value = float(text)
    else:
        if not isinstance(text, str):
            raise NumberError(f"{what} must be a number, not {type(text).__name__}")
        if len(text) > NUMBER_CHARS_MAX:
            raise NumberError(f"{what} has more than {NUMBER_CHARS_MAX} characters; it must be {span}")
        if not _DECIMAL.match(text):
            raise NumberError(f"{what} must be a number{' of ' + unit if unit else ''}, not {_show(text)}")
        value = float(text)
    if not math.isfinite(value) or value > hi or value < lo or (value == lo and not lo_inclusive):
        raise NumberError(f"{what} must be {span}")
    return value


def parse_seconds(text, what: str, *, hi: float) -> float:
    """A duration from a client or a URL: a finite number of seconds in (0, hi]."""
    return parse_float(text, what, lo=0.0, hi=hi, lo_inclusive=False, unit="seconds")
