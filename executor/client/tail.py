"""TAIL from Python: a job's output so far, or followed as it is written
(docs/protocol.md, TAIL).

    from executor.client import Client
    from executor.client.tail import tail, follow_job

    with Client("127.0.0.1:7001") as c:
        print(tail(c, "n1-7").text)              # what it wrote so far
        for frame in tail(c, "n1-7", follow=True):  # as it writes
            print(frame.text, end="")

    # From any peer, through redirects, queued starts and retries, to the end:
    status = follow_job("127.0.0.1:7001", "n1-7", write)

A TAIL frame is read as a RESULT is (`JobResult`); a streamed one carries
`more=yes|no` (`is_last`). `tail` asks one connected client and raises the
peer's `PeerError` (`not-home`, `elsewhere`) as it comes; `tail_at` and
`follow_job` take an address and go where those errors point (`home=`,
`executor=`). Apart from sync.py and aio.py because a stream is not one
request and one reply: a client whose stream was left half read must be
closed (the rest of the stream would be read as the next replies).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator

from executor.client.aio import AsyncClient
from executor.client.replies import (
    FINAL_STATES,
    RESULT,
    JobResult,
    JobStatus,
    PeerError,
    result_of,
)
from executor.client.sync import Client
from executor.core.errors import NOT_HOME_UNKNOWN, ErrorCode

TAIL_FOLLOW_READ_S = 3600.0 + 60.0
"""Longest a follower waits for the next frame: a peer ends every stream
within its `wait_max_s` (3600 s by default), output or not; the minute on
top is for a slow network. Past it: TimeoutError (a peer that vanished
without closing the connection)."""

TAIL_POLL_S = 0.5
"""`follow_job`: how often it asks again about a job that does not run
(yet), or whose run just ended and whose result is on its way home."""

TAIL_START_WAIT_S = 3600.0
"""`follow_job`: longest it waits, in all, for a job to run while it does
not (queued, waiting, scheduled, between tries, redirected back and forth
while its result travels); then TimeoutError."""

TAIL_HOPS_MAX = 4
"""`tail_at`: redirects (`not-home`, `elsewhere`) followed for one answer."""

def tail_line(job_id: str, follow: bool = False) -> str:
    if not isinstance(job_id, str) or not job_id or any(ch.isspace() for ch in job_id):
        raise ValueError(f"{str(job_id)[:64]!r} is not a job id (like n1-42)")
    return f"TAIL {job_id}" + (" -f" if follow else "")


def is_last(frame: JobResult) -> bool:
    """The frame ends its reply: a stream's `more=no`, or a one-frame answer."""
    return frame.status.fields.get("more", "no") != "yes"


def tail(client: Client, job_id: str, follow: bool = False, *,
         read_timeout_s: float = TAIL_FOLLOW_READ_S) -> JobResult | Iterator[JobResult]:
    """The output so far (one `JobResult`; state `running` at the peer that
    runs the job, RESULT's answer once it is final, no bytes while it is
    queued), or with `follow` an iterator of frames, each with only the new
    bytes, the last with `more=no` (`exited`, its exit code or reason, when
    the run ended; `running` when the peer cut the stream at its
    `wait_max_s`). `PeerError` as the peer answers (`elsewhere`: the job
    runs at `fields["executor"]`; `not-home`: ask `fields["home"]`)."""
    if not follow:
        client.send_lines([tail_line(job_id)])
        return result_of(client.read(RESULT))
    return _frames(client, job_id, read_timeout_s)


def _frames(client: Client, job_id: str, read_timeout_s: float) -> Iterator[JobResult]:
    line = tail_line(job_id, follow=True)  # checked before the generator runs
    return _stream(client, line, read_timeout_s)


def _stream(client: Client, line: str, read_timeout_s: float) -> Iterator[JobResult]:
    client.send_lines([line])
    old = client.sock.gettimeout()
    client.sock.settimeout(read_timeout_s)
    try:
        while True:
            frame = result_of(client.read(RESULT))
            yield frame
            if is_last(frame):
                return
    finally:
        client.sock.settimeout(old)


async def atail(client: AsyncClient, job_id: str, follow: bool = False, *,
                read_timeout_s: float = TAIL_FOLLOW_READ_S) -> JobResult | AsyncIterator[JobResult]:
    """`tail` for the trio client: a `JobResult`, or with `follow` an async
    iterator of frames (`async for frame in await atail(c, id, follow=True)`)."""
    line = tail_line(job_id, follow)
    if not follow:
        return await _aread_one(client, line)
    return _astream(client, line, read_timeout_s)


async def _aread_one(client: AsyncClient, line: str) -> JobResult:
    import trio

    await client.send_lines([line])
    with trio.fail_after(client.timeout_s):
        return result_of(await client.read(RESULT))


async def _astream(client: AsyncClient, line: str, read_timeout_s: float) -> AsyncIterator[JobResult]:
    import trio

    await client.send_lines([line])
    while True:
        with trio.fail_after(read_timeout_s):
            frame = result_of(await client.read(RESULT))
        yield frame
        if is_last(frame):
            return


def _redirect(exc: PeerError) -> str | None:
    """Where an error points: the home (`not-home`) or the executor
    (`elsewhere`); None when it points nowhere known."""
    if exc.code == ErrorCode.NOT_HOME:
        where = exc.fields.get("home")
    elif exc.code == ErrorCode.ELSEWHERE:
        where = exc.fields.get("executor")
    else:
        return None
    return None if where in (None, NOT_HOME_UNKNOWN) else where


def tail_at(addr: str, job_id: str, *, timeout_s: float = 30.0, **client_kw) -> JobResult:
    """One TAIL asked at `addr`, following `not-home` and `elsewhere` to the
    peer that can answer (at most `TAIL_HOPS_MAX` of them)."""
    for _ in range(TAIL_HOPS_MAX + 1):
        with Client(addr, timeout_s=timeout_s, **client_kw) as c:
            try:
                return tail(c, job_id)
            except PeerError as exc:
                where = _redirect(exc)
                if where is None:
                    raise
        addr = where
    raise ConnectionError(f"job {job_id}: more than {TAIL_HOPS_MAX} redirects; the peers disagree where it is")


Write = Callable[[bytes, bytes], None]


def follow_job(addr: str, job_id: str, write: Write, *, start_wait_s: float = TAIL_START_WAIT_S,
               poll_s: float = TAIL_POLL_S, timeout_s: float = 30.0, read_timeout_s: float = TAIL_FOLLOW_READ_S,
               sleep: Callable[[float], None] = time.sleep, **client_kw) -> JobStatus:
    """Follow a job from any peer to its end: `write(stdout, stderr)` gets
    each piece of output once, as the job writes it; returns the job's
    final status (its home's word: done, failed, cancelled).

    It asks `addr`, goes to the job's home (`not-home`) or executor
    (`elsewhere`) as told, streams a run (`TAIL -f`), and when the stream
    ends asks again: the same run once more after the peer's `wait_max_s`,
    the home after the run ended (its result, or the next try). While the
    job does not run it asks every `poll_s`, for at most `start_wait_s` in
    all since it last saw it run (then TimeoutError). Output is tracked per attempt: a run again
    (a retry, or after its executor crashed) is written from its start."""
    written: dict[int, list[int]] = {}  # attempt -> [stdout bytes, stderr bytes] written
    idle_s = 0.0  # time spent pausing with nothing running, since the last run seen
    here = addr
    bounces = 0  # redirects in a row without an answer
    while True:
        pause, idle = 0.0, True
        try:
            with Client(here, timeout_s=timeout_s, **client_kw) as c:
                pos = [0, 0]  # where this reply's frames are in the attempt's output
                last = None
                for frame in tail(c, job_id, follow=True, read_timeout_s=read_timeout_s):
                    bounces = 0
                    _write_new(frame, pos, written.setdefault(frame.status.attempt, [0, 0]), write)
                    last = frame
            if last.state in FINAL_STATES:
                return last.status
            if last.state in ("running", "exited"):
                idle_s, idle = 0.0, False
            # The peer cut a long stream (`running`), the run ended (its
            # result is on its way home: the executor redirects there), or
            # it does not run yet: ask again in a moment.
            pause = poll_s
        except PeerError as exc:
            where = _redirect(exc)
            if where is None and exc.code != ErrorCode.ELSEWHERE:
                raise
            bounces += 1
            if where is not None:
                here = where
            if where is None or bounces > 2:
                pause = poll_s  # home and executor disagree while a result travels: let it arrive
        if pause:
            idle_s += pause if idle else 0.0
            if idle_s > start_wait_s:
                raise TimeoutError(f"job {job_id} did not run within {start_wait_s:g} s")
            sleep(pause)


def _write_new(frame: JobResult, pos: list[int], written: list[int], write: Write) -> None:
    """Write the part of `frame`'s bytes beyond what was written of its
    attempt (a stream asked again restarts at the attempt's first byte)."""
    out = frame.stdout[max(written[0] - pos[0], 0):]
    err = frame.stderr[max(written[1] - pos[1], 0):]
    pos[0] += len(frame.stdout)
    pos[1] += len(frame.stderr)
    written[0], written[1] = max(written[0], pos[0]), max(written[1], pos[1])
    if out or err:
        write(out, err)
