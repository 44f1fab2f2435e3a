"""What a decoded peer message may hold: the link's check of every message
before it reaches the core (sans-IO; the codec has checked the types).

Apart from executor/edge/links.py (sockets, frames, handshakes) because it
is pure judgement: well-formed ids and addresses (they end up in replies
to clients and in LevelDB keys), finite numbers, non-negative counters,
runnable job fields, and sender fields equal to the link's own peer. A
message that fails closes the link (`wire.ProtocolError`); `links.py`
re-exports `check_message`.
"""

from __future__ import annotations

import dataclasses
import math
import re

from executor.core import messages as jm
from executor.core.protocol import command_text_problem, is_job_id
from executor.core.spec import PRIORITY_MAX, JobSpec, spec_problem
from gossip import membership, wire

_PEER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
# Job ids and commands are judged by executor/core/protocol.py's `is_job_id` and
# `command_text_problem`, the very predicates the client parser uses: a job a
# client was told `OK` for can always cross a link, and nothing a link
# refuses can be submitted (a CR in a command once wedged handoffs).
_ADDR = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,255}):([0-9]{1,5})\Z")
_REASON = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_INT_MAX = 2**63 - 1
_EXIT_CODE_MAX = 2**31
_SIGNED_MAX = {"exit_code": _EXIT_CODE_MAX, "priority": PRIORITY_MAX}  # the only fields that may be negative
_SLEEP_MS_MAX = 24 * 3600 * 1000

_TOP_LEVEL = frozenset(membership.GOSSIP_MESSAGES) | {
    jm.StealRequest, jm.Handoff, jm.HandoffAck, jm.JobMoved, jm.JobResult, jm.ResultAck, jm.CancelJob,
    jm.Audit, jm.AuditReply, jm.DependencyQuery, jm.DependencyReply}
# Fields naming the peer that sent the message: they must be the link's own
# (authenticated) peer id, so a peer cannot speak for another.
_SENDER_FIELD = {jm.StealRequest: "thief", jm.Handoff: "sender", jm.HandoffAck: "receiver",
                 jm.JobMoved: "executor", jm.JobResult: "executor", jm.Audit: "auditor",
                 jm.AuditReply: "holder", jm.DependencyQuery: "asker", jm.DependencyReply: "home"}
_PEER_FIELDS = frozenset({"id", "from_id", "target_id", "thief", "sender", "receiver", "executor", "home",
                          "auditor", "holder", "asker"})
_JOB_ID_FIELDS = frozenset({"job_id", "job_ids", "missing"})
_ADDR_FIELDS = frozenset({"addr", "from_addr", "target_addr"})


def check_message(msg, link_peer_id: str, config) -> None:
    """Raise `wire.ProtocolError` unless `msg` (decoded and type-checked by
    gossip/wire.py) is something a peer may send us on a link that announced
    `link_peer_id`: a top-level message kind, well-formed ids and addresses
    (they end up in replies to clients and in LevelDB keys), finite numbers,
    non-negative counters, runnable job fields, and sender fields equal to the
    link's peer. The core then judges the meaning (stale incarnations, unknown
    transfers, acks for nothing) and ignores what does not apply."""
    if type(msg) not in _TOP_LEVEL:
        raise wire.ProtocolError(f"{type(msg).__name__} is not a message a peer sends on its own")
    sender_field = _SENDER_FIELD.get(type(msg))
    if sender_field is not None and getattr(msg, sender_field) != link_peer_id:
        raise wire.ProtocolError(
            f"{type(msg).__name__}.{sender_field}={getattr(msg, sender_field)!r} on the link of {link_peer_id!r}")
    _check_value(msg, "", config)


def _check_value(value, name: str, config) -> None:
    kind = type(value)
    if kind is int:
        limit = _SIGNED_MAX.get(name, _INT_MAX)
        low = -limit if name in _SIGNED_MAX else 0
        if not low <= value <= limit:
            # Never str() a peer's integer: one of 5,000 digits makes str()
            # raise ValueError (Python's digit limit), not the ProtocolError
            # that closes the link (found by `python -m sim fuzz`).
            shown = value if abs(value) <= _INT_MAX else f"{'-' if value < 0 else ''}<{value.bit_length()} bits>"
            raise wire.ProtocolError(f"{name}={shown} out of range")
    elif kind is float:
        if not math.isfinite(value):
            raise wire.ProtocolError(f"{name} is not finite")
    elif kind is str:
        if name in _PEER_FIELDS:
            ok = _PEER_ID.match(value) is not None
        elif name in _ADDR_FIELDS:
            m = _ADDR.match(value)
            ok = m is not None and 0 < int(m.group(2)) <= 65535
        elif name in _JOB_ID_FIELDS:
            ok = is_job_id(value)
        elif name == "reason":
            ok = _REASON.match(value) is not None
        elif name == "command":
            ok = command_text_problem(value) is None
        else:
            ok = "\n" not in value and "\r" not in value and "\0" not in value
        if not ok:
            raise wire.ProtocolError(f"bad {name or 'string'}: {value[:80]!r}")
    elif kind is tuple or kind is list:
        for item in value:
            _check_value(item, name, config)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _check_value(getattr(value, f.name), f.name, config)
        if kind is jm.JobTransfer:
            _check_transfer(value, config)
    # bytes, bool, None, enums: the codec's type check is all they need.


def _check_transfer(t: jm.JobTransfer, config) -> None:
    if t.kind not in ("sh", "sleep"):
        raise wire.ProtocolError(f"job {t.job_id}: unknown kind {t.kind[:16]!r}")
    if t.job_id.rpartition("-")[0] != t.home:
        raise wire.ProtocolError(f"job {t.job_id}: home {t.home!r} does not match its id")
    if t.kind == "sh" and (not t.command.strip() or len(t.command.encode()) > config.command_bytes_max):
        raise wire.ProtocolError(f"job {t.job_id}: empty or oversize command")
    if t.sleep_ms > _SLEEP_MS_MAX:
        raise wire.ProtocolError(f"job {t.job_id}: sleep_ms {t.sleep_ms} out of range")
    if t.timeout_s is not None and not 0 < t.timeout_s <= config.job_timeout_max_s:
        raise wire.ProtocolError(f"job {t.job_id}: timeout_s {t.timeout_s} out of range")
    problem = spec_problem(JobSpec(t.kind, t.command, t.sleep_ms, t.timeout_s, t.priority, t.env, t.cwd,
                                   slots=t.slots))
    if problem is not None:
        raise wire.ProtocolError(f"job {t.job_id}: {problem}")
    if t.attempt < 1:
        raise wire.ProtocolError(f"job {t.job_id}: attempt {t.attempt} out of range")
