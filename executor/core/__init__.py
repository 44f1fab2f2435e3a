"""The peer's decision core (sans-IO): every event in, writes and actions out.

No module here does I/O, reads a clock or draws a global random number
(tests/test_layers.py keeps it so). `peer.py` holds `PeerCore` and its theory
of operation; each concern is a mixin of its own:

* `events.py`   what goes in (events) and what comes out (actions);
* `clients.py`  client commands and replies;
* `running.py`  the queue, starting jobs, a job's exit, accepting results;
* `handoff.py`  stealing, the two-phase handoff, location reports;
* `recovery.py` restart, result resends, re-issue, audits.
"""

from executor.core.clients import read_result, result_reply
from executor.core.events import (
    Action,
    ClientClosed,
    ClientRequest,
    Counters,
    DiskSpace,
    Event,
    JobExited,
    KillJob,
    Log,
    PeerMessage,
    PeerUnreachable,
    Reply,
    ReplyResult,
    ReplyTail,
    Send,
    StartJob,
    Tick,
    carry_out,
    is_immediate,
)
from executor.core.peer import PeerCore

__all__ = [
    "Action", "ClientClosed", "ClientRequest", "Counters", "DiskSpace", "Event", "JobExited",
    "KillJob", "Log", "PeerCore", "PeerMessage", "PeerUnreachable", "Reply", "ReplyResult", "ReplyTail", "Send", "StartJob",
    "Tick", "carry_out", "is_immediate", "read_result", "result_reply",
]
