"""Errors as data: the codes of `ERR <code> [key=value ...] <message>` lines.

Every code a peer answers with is a member of `ErrorCode`, and every error
line is made by `err` (or `ClientError.reply`), so that a client compares
codes instead of reading prose, and data a client acts on (the address of a
job's home in `not-home`) travels as a `key=value` field right after the
code rather than inside the message (docs/protocol.md, Errors). Apart from
executor/core/protocol.py (commands, lines, replies) because the edges and
the core make errors too; protocol.py re-exports every name.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(enum.StrEnum):
    """Every code an `ERR <code> ...` line (and an HTTP error's "error") carries.

    One list, so that a code is data a client can compare against rather than
    prose it has to parse, and so that a typo in a code is an AttributeError
    at the place it is made instead of a new code on the wire. The values
    are the wire text (docs/protocol.md, Errors); a StrEnum formats as its
    value, so `f"ERR {code}"` writes exactly what it always wrote."""

    BAD_REQUEST = "bad-request"
    BAD_ID = "bad-id"
    NOT_FOUND = "not-found"
    NOT_HOME = "not-home"
    ELSEWHERE = "elsewhere"  # TAIL of a job running at another peer: `executor=<addr>` names it
    NOT_FINISHED = "not-finished"
    FINISHED = "finished"
    BUSY = "busy"
    DISK_FULL = "disk-full"
    STORAGE = "storage"
    TIMEOUT = "timeout"
    UNKNOWN_COMMAND = "unknown-command"
    ENCODING = "encoding"
    LINE_TOO_LONG = "line-too-long"
    COMMAND_TOO_LONG = "command-too-long"
    AUTH_REQUIRED = "auth-required"
    AUTH_FAILED = "auth-failed"
    NOT_ALLOWED = "not-allowed"
    SLOW_SENDER = "slow-sender"
    IDLE_TIMEOUT = "idle-timeout"
    TOO_MANY_CONNECTIONS = "too-many-connections"
    PROTOCOL_ERROR = "protocol-error"
    NAME_CONFLICT = "name-conflict"  # made by gossip/hello.py, which imports nothing of executor/
    # HTTP only (executor/edge/http.py): the JSON body's "error".
    INTERNAL = "internal"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    STARTING = "starting"


NOT_HOME_UNKNOWN = "-"
"""The `home=` field of `ERR not-home` when the peer knows no address for
the job's home (not, or no longer, a member it has heard of)."""

FIELD_TOKEN = re.compile(r"[a-z][a-z0-9_]*=\S+\Z")
"""One field of an error line, `key=value`: a lower-case key and a value
without blanks, so that a reader (executor/client/replies.py) takes leading
tokens that match as fields and finds the message where the first one that
does not match begins."""


class ClientError(Exception):
    """A bad request from a client: answered with `ERR <code> [key=value ...] <message>`.

    `fields` are data a client acts on (`not-home`'s `home=`), written as
    leading `key=value` tokens so that nobody has to read them out of the
    prose that follows."""

    def __init__(self, code: ErrorCode, message: str, **fields: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = fields

    def reply(self) -> bytes:
        return err(self.code, self.message, **self.fields)


def err(code: ErrorCode, message: str, **fields: str) -> bytes:
    """`ERR <code> [key=value ...] <message>`: fields first, as data.

    Only our own code makes codes and fields, so a wrong one is a bug here:
    asserted (a field must be one `FIELD_TOKEN`)."""
    assert isinstance(code, ErrorCode), code
    head = [str(code)]
    for key, value in fields.items():
        assert FIELD_TOKEN.match(f"{key}={value}"), (key, value)
        head.append(f"{key}={value}")
    if message:  # a bare `ERR <code>` stays bare (a refused peer link's `ERR auth-failed`)
        head.append(message)
    return f"ERR {' '.join(head)}\n".encode()
