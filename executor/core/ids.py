"""What a job id is: ONE definition, used by the client parser
(executor/core/protocol.py, executor/core/spec.py), the peer-frame check
(executor/edge/link_checks.py) and the HTTP paths (executor/edge/http.py), so
that no door accepts what another refuses."""

from __future__ import annotations

import re

from executor.core.errors import ClientError, ErrorCode

PEER_ID_CHARS_MAX = 64
"""Longest peer name (executor/settings.py `parse_name`, gossip's peer ids)."""

JOB_SEQ_DIGITS_MAX = 18
"""Digits of a job's sequence number: 10**18 jobs is more than any peer will
issue, and it fits a signed 64-bit integer (CBOR, LevelDB keys), so turning
it into an int is always cheap and never hits Python's digit limit."""

CHILD_INDEX_DIGITS_MAX = 9
"""Digits of a child's index (an array element's, a periodic job's run number)."""

JOB_ID_CHARS_MAX = PEER_ID_CHARS_MAX + 1 + JOB_SEQ_DIGITS_MAX + 1 + CHILD_INDEX_DIGITS_MAX

JOB_ID = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-[0-9]{1,%d}(?:\.[0-9]{1,%d})?\Z"
                    % (JOB_SEQ_DIGITS_MAX, CHILD_INDEX_DIGITS_MAX))
"""`<home peer>-<sequence>[.<index>]`: the home is letters, digits, `_`, `.`
and inner dashes; the sequence ASCII digits; a child of an array or a
periodic job (`n1-5.3`) has its parent's id and its index. Only ever matched
after the length check of `is_job_id`, so the regex never scans more than
`JOB_ID_CHARS_MAX`."""


def split_job_id(job_id: str) -> tuple[str, int]:
    """`n1-42` -> ("n1", 42). The home peer is everything before the last dash.

    Total: a sequence that is not 1 to `JOB_SEQ_DIGITS_MAX` ASCII digits
    gives 0, a number no peer issues (sequences start at 1), so whatever
    reaches here unchecked sorts first and is found nowhere, and nothing
    raises."""
    home, _, seq = job_id.rpartition("-")
    seq = seq.partition(".")[0]  # a child's sequence is its parent's
    if not (0 < len(seq) <= JOB_SEQ_DIGITS_MAX and seq.isascii() and seq.isdigit()):
        return home, 0
    return home, int(seq)


def order_key(job_id: str) -> tuple[int, int]:
    """Issue order: (sequence, child index; 0 for a job that is no child)."""
    _, _, index = job_id.rpartition("-")[2].partition(".")
    return split_job_id(job_id)[1], int(index) if index.isdigit() and len(index) <= CHILD_INDEX_DIGITS_MAX else 0


def parent_of(job_id: str) -> str | None:
    """`n1-5.3` -> "n1-5"; None for a job that is no child."""
    head, _, tail = job_id.rpartition("-")
    seq, dot, _ = tail.partition(".")
    return f"{head}-{seq}" if dot else None



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



def is_job_id(text: str) -> bool:
    """Whether `text` is a well-formed job id (never raises, whatever the input)."""
    return type(text) is str and len(text) <= JOB_ID_CHARS_MAX and JOB_ID.match(text) is not None
