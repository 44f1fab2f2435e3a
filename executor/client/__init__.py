"""The client side of peerjobs: one implementation for the CLI, the HTTP
dashboard, the tests, the benchmarks and `sim/`.

Synchronous:

    from executor.client import Client
    with Client("127.0.0.1:7001") as c:
        job = c.submit("echo hello")
        print(c.wait(job, timeout_s=10).state)      # done
        print(c.result(job).text)                   # hello

trio:

    import trio
    from executor.client import AsyncClient

    async def main():
        async with AsyncClient("127.0.0.1:7001") as c:
            ids = await c.submit_many(["SUBMIT echo a", "SUBMIT echo b"])
            for job in ids:
                print((await c.wait(job)).state)

    trio.run(main)

`submit` and `submit_commands` take SUBMIT's options as keywords
(`retries=3, priority=5, env={"A": "1"}, after=[job], ...`); every request
line is built in `lines.py`, which checks each option with the peer's own
parser before anything is sent (ValueError naming the option).

Both speak through `ReplyReader` (`replies.py`), a sans-IO parser of the
peer's replies; `sync.py` and `aio.py` only move bytes. `submit_many` and
`request_many` pipeline: they write many lines before reading the replies
(which come back in order), so one connection keeps dozens of requests in
flight. `cli.py` is the `peerjobs` command.

Errors: `ERR <code> [key=value ...] <message>` raises `PeerError` (`WaitTimeout` for
`ERR timeout`) with `code` an `ErrorCode` and the `key=value` data in `fields`; a peer that cannot be reached raises `Unreachable` (a
`ConnectionError`); a connection that breaks or says something that is not
the protocol raises `ConnectionError`.
"""

from executor.client.aio import AsyncClient
from executor.client.lines import SubmitOptions, list_line
from executor.client.replies import (
    DEFAULT_ADDR,
    FINAL_STATES,
    LINE,
    LINES,
    RESULT,
    STATES,
    WINDOW,
    JobResult,
    JobStatus,
    PeerError,
    PeerInfo,
    Reply,
    ReplyReader,
    Unreachable,
    WaitTimeout,
    parse_error,
    parse_peer,
    parse_status,
    reply_shape,
    result_of,
    stats_of,
    submit_line,
    wait_line,
)
from executor.client.sync import Client, connect

__all__ = [
    "DEFAULT_ADDR", "FINAL_STATES", "LINE", "LINES", "RESULT", "STATES", "WINDOW", "AsyncClient", "Client", "JobResult",
    "JobStatus", "PeerError", "PeerInfo", "Reply", "ReplyReader", "Unreachable", "WaitTimeout", "connect",
    "parse_error", "parse_peer", "parse_status", "reply_shape", "result_of", "stats_of", "submit_line", "wait_line",
    "SubmitOptions", "list_line",
]
