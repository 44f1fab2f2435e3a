"""The values of `peerjobs` settings: names of the environment variables,
the presets, the bounds of a setting, and one parser per kind of value
(HOST:PORT, a peer name, slots, booleans, integers, reals, join lists).

Apart from executor/settings.py, which resolves flags > environment > file >
defaults into a node's or a client's settings, because these parsers are
shared by the resolution and by the CLI's flag checks, and say on their own
what a well-formed value is. `executor.settings` re-exports every name.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from executor.config import Config
from executor.core.numbers import parse_float, parse_int

ENV_PREFIX = "PEERJOBS_"
ENV_CONFIG = "PEERJOBS_CONFIG"
ENV_ADDR = "PEERJOBS_ADDR"
ENV_SECRET = "PEERJOBS_SECRET"
ENV_TOKEN = "PEERJOBS_TOKEN"
ENV_TLS_CA = "PEERJOBS_TLS_CA"
DEFAULT_PEER = "127.0.0.1:7001"
PRESETS = {"local": Config.local, "lan": Config.lan}

_NAME = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*\Z")

SETTING_INT_MAX = 2**63 - 1
"""Largest integer setting: every count and byte bound fits a signed 64-bit
integer (what LevelDB, CBOR and the peer frames carry)."""

SETTING_FLOAT_MAX = 1e9
"""Largest real-valued setting (seconds, multipliers): about 31 years; more
is a typo, and an infinite timer would never fire."""

SLOTS_MAX = 65536
"""Largest `--slots`: jobs one peer runs at once (each is a process)."""


class SettingsError(Exception):
    """A setting that cannot be used; the message names it and its source."""


# ---------------------------------------------------------------------------
# Value parsers (shared with the CLI's flags)


def parse_hostport(text: str, *, allow_zero: bool = True) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{str(text)[:80]!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", parse_int(port, f"the port of {str(text)[:80]!r}",
                                                      lo=0 if allow_zero else 1, hi=65535)


def parse_name(text: str) -> str:
    if not _NAME.match(text) or len(text) > 64:
        raise ValueError(f"{text!r}: a peer name is letters, digits, '_', '.' and inner '-' (at most 64)")
    return text


def parse_positive(text: Any) -> int:
    """A count of slots: 1 to `SLOTS_MAX` (a flag, an env var or a TOML integer)."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"{text!r} is not a positive integer")
    return parse_int(text.strip() if isinstance(text, str) else text, "the value", lo=1, hi=SLOTS_MAX)


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def default_name(port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "peer"
    return f"{host}.{port}"


def _join_list(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        item = str(item).strip()
        if item:
            h, p = parse_hostport(item, allow_zero=False)
            out.append(f"{h}:{p}")
    return out


def _hostport_text(value: Any) -> str:
    h, p = parse_hostport(value)
    return f"{h}:{p}"


def _http(value: Any) -> str | None:
    if value in (None, "", "off", False):
        return None
    return _hostport_text(value)


NODE_KEYS: dict[str, Any] = {
    # key: parser
    "data": str,
    "listen": _hostport_text,
    "slots": parse_positive,
    "name": parse_name,
    "join": _join_list,
    "http": _http,
    "preset": lambda v: _one_of(v, PRESETS),
    "verbose": parse_bool,
    "secret_file": str,
    "token_file": str,
    "allow_commands": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "insecure": parse_bool,
}


def _one_of(value: Any, choices) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def _integer(value: Any) -> int:
    """An integer setting (a count or a bound): 0 to `SETTING_INT_MAX`, through
    the one bounded number parser (executor/core/numbers.py)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return parse_int(value.strip() if isinstance(value, str) else value, "the value", lo=0, hi=SETTING_INT_MAX)


def _number(value: Any) -> float:
    """A real-valued setting (seconds, multipliers): finite, 0 to `SETTING_FLOAT_MAX`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return parse_float(value.strip() if isinstance(value, str) else value, "the value", lo=0.0, hi=SETTING_FLOAT_MAX)


def _field_parser(kind: Any):
    return {"bool": parse_bool, "int": _integer, "float": _number, bool: parse_bool, int: _integer,
            float: _number}.get(kind, str)
