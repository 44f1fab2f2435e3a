"""Every bound and period of a peer, in one frozen object.

Names carry their unit last (`line_bytes_max`, `wait_max_s`). Each bound is
checked at the edge that receives the input, and exceeding it gets a named
error (see docs/protocol.md for the client-facing ones). Presets: `local()`
for a cluster on loopback (tight timers), `lan()` for real machines, and
`simulation()` for the deterministic simulation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gossip.config import GossipConfig


FRAME_OVERHEAD_BYTES = 4096
"""Room for everything in a peer frame besides commands and outputs (ids,
numbers, CBOR headers, the link's MAC); generous on purpose."""


@dataclass(frozen=True)
class Config:
    # --- client protocol ------------------------------------------------
    line_bytes_max: int = 64 * 1024
    """Longest client line. 64 KiB fits any sane shell command; a longer line
    gets `ERR line-too-long` and is dropped without buffering it."""

    command_bytes_max: int = 16 * 1024
    """Longest command in SUBMIT (a job record is kept for ever, so keep it
    small; 16 KiB is four times the Linux `ps` display limit)."""

    client_connections_max: int = 256
    """Concurrent client connections; one more gets `ERR too-many-connections`.
    Peer links have a budget of their own (`peer_links_max`): no number of
    clients can keep peers out, and no number of peers can keep clients out."""

    peer_links_max: int = 256
    """Concurrent inbound peer links (each peer opens one to us). A cluster
    larger than this is beyond what one peer's full mesh of links serves."""

    client_draining_max: int = 1024
    """Clients that hung up (EOF) with replies still owed, typically a WAIT
    (`printf 'WAIT id\\n' | nc -q1`): they no longer hold a connection slot,
    but stay until their replies are written (or `slow_receiver_s`). Past
    this many, a hung-up client is closed at once and its WAITs dropped."""

    client_pipeline_max: int = 64
    """Requests a client may have outstanding on one connection (pipelining);
    past it the peer stops reading from that client (backpressure)."""

    client_connections_per_source_max: int = 32
    """Concurrent connections (clients and inbound peer links) from one source
    IP address; one more gets `ERR too-many-connections`. Keeps one host from
    taking all of `client_connections_max`; 32 is far above what one peer
    (one link per destination) or a pipelining client needs."""

    client_idle_s: float = 300.0
    """A connection that sends nothing for this long is closed with
    `ERR idle-timeout`. A pending WAIT counts as activity."""

    client_reply_bytes_max: int = 4 * 1024 * 1024
    """Reply bytes a client connection may have waiting to be sent; past it
    the peer reads no further request from it until the client reads
    (backpressure). Without it, 64 pipelined RESULTs of a full job output
    each (2 x output_bytes_max) would hold 128 MiB for one connection. One
    reply larger than the bound is still sent whole."""

    slow_sender_s: float = 30.0
    """A line (client) or frame (peer) that has started to arrive must be
    complete within this; else the connection is closed (`ERR slow-sender`).
    Stops slow-loris senders from holding buffers and connection slots
    forever; 30 s moves a full 8 MiB frame at 300 KiB/s."""

    slow_receiver_s: float = 30.0
    """A reply (client) or a batch of frames (peer link) must be taken by the
    other side within this; else the connection is closed. A reader that never
    reads would otherwise hold its buffered replies for ever."""

    hello_timeout_s: float = 10.0
    """From accepting a connection to its TLS handshake, hello line and
    authentication exchange being complete (a peer), or its first line (with
    a client token: `AUTH <token>`). Unauthenticated connections cost a slot
    for at most this long; a real peer needs one round trip."""

    wait_max_s: float = 3600.0
    """Longest WAIT, and the timeout of a WAIT without one. Also the longest
    `TAIL -f` stream: past it the stream ends (`more=no`, still `running`)."""

    tail_poll_s: float = 0.1
    """How often a `TAIL -f` stream looks for new output of its job; what
    came meanwhile goes out as one frame (of at most `output_bytes_max`)."""

    list_max: int = 1000
    """Largest LIST count."""

    http_answer_timeout_s: float = 10.0
    """Longest an HTTP request (`/api/jobs/<id>`) waits for the core's answer
    (one group commit, normally milliseconds); past it: 504. Keeps a wedged
    core from holding HTTP requests, and their memory, for ever."""

    http_jobs_limit_max: int = 1000
    """Largest `?limit=` of `/api/jobs` (rows of a JSON reply built in the
    core's thread: bounded so one request cannot stall the peer)."""

    http_fanout_timeout_s: float = 3.0
    """Longest `/api/cluster/jobs` (and a job's page for another home) waits
    for the members it asks, all asked at once; a member slower than this is
    listed as not answering, and the page is served without its jobs."""

    http_fanout_members_max: int = 32
    """Members asked by one `/api/cluster/jobs` request (a connection to
    each): bounds what one dashboard refresh costs this peer and the cluster;
    beyond it the reply says how many were not asked (filter by peer)."""

    http_fanout_connections_max: int = 64
    """Connections to members open at once for the HTTP API, over all its
    requests (every dashboard tab asks every member each refresh, a job's
    page each of its dependencies' homes): file descriptors and the members'
    connection budgets. A question waiting for one counts against
    `http_fanout_timeout_s`."""

    http_fanout_reply_bytes_max: int = 16 * 1024 * 1024
    """Bytes read from one member for one question (a LIST of
    `http_jobs_limit_max` lines, a RESULT or TAIL of 2 x `output_bytes_max`):
    past it that member is listed as `reply-too-large`, and what it sent is
    dropped; a member cannot make this peer buffer without end."""

    # --- jobs -----------------------------------------------------------
    queue_jobs_max: int = 100_000
    """Jobs queued (not running) at this peer; SUBMIT past it gets `ERR busy`
    and nothing is stored. Bounds memory: a queued job costs ~1 KiB."""

    records_retained_max: int = 200_000
    """Finished jobs a home remembers (record and output); past it the oldest
    finished are forgotten and STATUS answers not-found. A record costs about
    1 KiB of memory, so this bounds a long-lived peer's memory and store."""

    records_retained_s: float | None = 7 * 24 * 3600.0
    """How long a finished job is remembered (on the wall clock, from its
    end) unless it was submitted with `--keep`; None: until the count bound."""

    retry_backoff_max_s: float = 600.0
    """The longest wait before a retry, whatever `--backoff` and the try
    number make of it (before jitter)."""

    dependency_poll_s: float = 1.0
    """How often a home asks other homes about the dependencies its waiting
    jobs wait for (asking, not subscribing: nothing to lose in a crash)."""

    dependency_query_ids_max: int = 256
    """Job ids in one dependency query (a frame's worth, with room to spare)."""

    job_timeout_default_s: float = 3600.0
    """Run time of a job submitted without --timeout; then it is killed and
    marked failed with reason=timeout."""

    job_timeout_max_s: float = 7 * 24 * 3600.0
    """Largest --timeout a client may ask for."""

    output_bytes_max: int = 1024 * 1024
    """Captured bytes of stdout and of stderr, each; the rest is read and
    dropped, and the result says truncated=yes."""

    kill_grace_s: float = 2.0
    """After SIGTERM to a job's process group (cancel, timeout, shutdown),
    how long before SIGKILL."""

    # --- durability -----------------------------------------------------
    commit_events_max: int = 4096
    """Events folded into one group commit; bounds the latency a huge burst
    adds to the first ack in it."""

    commit_writes_max: int = 65536
    """Writes waiting for the disk while a sync is in flight; past it client
    requests wait until the sync lands (backpressure), while peer messages
    and timers go on, so membership never waits behind a slow disk. At twice
    this, the core itself waits (the last resort that keeps memory bounded).
    Every sync runs in a worker thread: one that ran on the event loop's
    thread (cheaper by a thread hop on a fast disk) stalled probes and acks
    for as long as a slow disk took, and made a live peer look dead."""

    disk_free_bytes_min: int = 64 * 1024 * 1024
    """Below this much free space in the data directory's file system the
    peer takes no new work (SUBMIT: `ERR disk-full`; handoffs and steals are
    refused) and keeps the rest for what it already owes: results, cancels,
    membership. 64 MiB holds tens of thousands of small results. A write
    that fails anyway (the disk filled faster) stops the peer (fail-stop)."""

    disk_check_interval_s: float = 0.5
    """While the disk is low, how often its free space is looked at again
    (otherwise it is looked at after every synced batch)."""

    inbox_events_max: int = 4096
    """Events waiting for the core; producers (clients, runners, peer links)
    wait when it is full (backpressure, never dropping)."""

    inbox_client_requests_max: int = 256
    """Client requests in the inbox not yet handled, from every client
    together; past it readers wait. Peer messages share the inbox: this bounds
    how long a probe's ack waits behind pipelined requests (256 x ~50 us), so
    that a peer flooded by clients does not look dead to the others."""

    tick_interval_s: float = 0.02
    """How often the core's timers are looked at (WAIT deadlines, membership,
    balance, retries); the resolution of every timer below."""

    # --- cluster --------------------------------------------------------
    frame_bytes_max: int = 8 * 1024 * 1024
    """Largest CBOR frame from a peer; a handoff batch or a result (which
    carries up to 2 x output_bytes_max) must fit."""

    peer_link_unacked_s: float = 3.0
    """Data on a peer link unacknowledged this long closes the link
    (TCP_USER_TIMEOUT). Longer than any pause a live peer's kernel would
    take to acknowledge; far shorter than TCP's own give-up (~15 minutes),
    so a partition's stale links do not delay the heal."""

    peer_send_queue_max: int = 1024
    """Frames waiting to be written to one peer; past it gossip frames are
    dropped and counted (gossip tolerates loss; job messages are resent)."""

    steal_interval_s: float = 0.01
    """How often an underloaded peer may start a steal."""

    steal_idle_recheck_s: float = 0.1
    """After a look at the loads found nobody worth stealing from, the next
    look waits this long (half a probe period: loads are gossiped once per
    period), unless a slot frees up here first."""

    balance_sample_max: int = 32
    """Peers a balancing decision looks at. Up to this many, all of them;
    beyond, a fresh random sample each tick, with the mean estimated from it
    (power of d choices): decisions cost O(1), not O(cluster size)."""

    steal_threshold: float = 1.0
    """A thief asks only a peer ahead of it by more than this many jobs' worth
    (normalised by slots). Any value below 2 balances down to single jobs;
    larger values trade balance for fewer moves (executor/core/balance.py)."""

    steals_in_flight_max: int = 1
    """Steal requests this peer has outstanding; one keeps thieves from
    acting twice on one stale view."""

    steal_timeout_s: float = 1.0
    """A steal request unanswered for this long is forgotten (a late grant
    is still accepted: jobs are never refused)."""

    handoff_batch_max: int = 256
    """Jobs moved in one handoff message."""

    handoff_timeout_s: float = 5.0
    """A victim that hears no ack for a handoff this long takes the jobs back
    (the thief may also run them: at-least-once, never lost)."""

    result_retry_s: float = 0.2
    """First resend delay of an unacknowledged result; doubles each time."""

    result_retry_max_s: float = 5.0
    """Cap of the resend back-off."""

    outbox_orphan_retain_s: float = 24 * 3600.0
    """Results for a home that membership has forgotten (dead past its
    retention) wait this long for it to come back, then are dropped: the
    outbox stays bounded by what live homes are owed. A home back later
    re-issues those jobs (its audits find them missing here)."""

    outbox_orphans_max: int = 100_000
    """Results for forgotten homes kept at once; past it the oldest go."""

    audit_interval_s: float = 2.0
    """How often a home asks the peers it believes hold its unfinished jobs
    whether they still do. A job reported missing twice in a row, with no
    news of it in between, is re-issued: this catches a location report lost
    on a broken link before its new holder died for good."""

    audit_batch_max: int = 256
    """Job ids in one Audit message."""

    reissue_grace_s: float = 3.0
    """A job whose executor has been dead this long is re-issued by its
    home with attempt + 1."""

    gossip: GossipConfig = field(default_factory=GossipConfig.local)
    """Membership timers (gossip/config.py documents each)."""

    def __post_init__(self) -> None:
        # Bounds every client request must get under: at 0 each one would
        # wait for ever (a budget or a share of the inbox that is never there).
        for name in ("client_pipeline_max", "inbox_client_requests_max", "commit_writes_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (at 0 every client request would wait for ever)")
        # One result must fit one peer frame (a result is framed whole: its
        # stdout and stderr, each up to output_bytes_max), and so must one
        # handoff batch of the longest commands. A config where they cannot
        # would wedge the first large result; refuse it at start-up instead.
        result_bytes = 2 * self.output_bytes_max + FRAME_OVERHEAD_BYTES
        if result_bytes > self.frame_bytes_max:
            raise ValueError(
                f"frame_bytes_max ({self.frame_bytes_max}) cannot carry one result: 2 x output_bytes_max "
                f"({self.output_bytes_max}) + {FRAME_OVERHEAD_BYTES} bytes of fields; raise frame_bytes_max "
                f"to at least {result_bytes} or lower output_bytes_max")
        batch_bytes = self.handoff_batch_max * (self.command_bytes_max + FRAME_OVERHEAD_BYTES)
        if batch_bytes > self.frame_bytes_max:
            raise ValueError(
                f"frame_bytes_max ({self.frame_bytes_max}) cannot carry one handoff of handoff_batch_max "
                f"({self.handoff_batch_max}) jobs of command_bytes_max ({self.command_bytes_max}); "
                f"lower one of them or raise frame_bytes_max to at least {batch_bytes}")

    @classmethod
    def local(cls, **overrides) -> Config:
        """Peers on one machine (loopback): tight timers."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def lan(cls, **overrides) -> Config:
        """Peers on a LAN: memberlist's LAN timers, and more patience before
        taking back a handoff or re-issuing a job."""
        return dataclasses.replace(
            cls(gossip=GossipConfig.lan(), reissue_grace_s=30.0, handoff_timeout_s=15.0, audit_interval_s=10.0),
            **overrides,
        )

    @classmethod
    def simulation(cls, **overrides) -> Config:
        """The deterministic simulation: local timers on a virtual clock."""
        return dataclasses.replace(cls(gossip=GossipConfig.simulation()), **overrides)


# ---------------------------------------------------------------------------
# Trust: who may join, who may submit, what may run (docs/security.md)


_SAFE_TAIL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-./=:,@%+")


@dataclass(frozen=True)
class AllowList:
    """Commands a client may SUBMIT. An entry is an exact command, or a prefix
    ending in `*`. What a `*` matches may hold only letters, digits, spaces
    and `_-./=:,@%+`: no `;`, `|`, `&`, `$`, quotes, backticks, redirections
    or globs, so `make *` cannot become `make x; rm -rf ~` (the command runs
    under /bin/sh -c)."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """One entry per line; blank lines and lines starting with `#` are skipped."""
        exact, prefixes = set(), []
        for line in text.splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.endswith("*"):
                prefixes.append(entry[:-1])
            else:
                exact.add(entry)
        return cls(frozenset(exact), tuple(prefixes))

    def allows(self, command: str) -> bool:
        command = command.strip()
        if command in self.exact:
            return True
        for prefix in self.prefixes:
            if command.startswith(prefix) and all(c in _SAFE_TAIL for c in command[len(prefix):]):
                return True
        return False

    def __len__(self) -> int:
        return len(self.exact) + len(self.prefixes)


@dataclass(frozen=True)
class Security:
    """The trust settings of one peer, loaded by executor/settings.py.

    * `secret`: the cluster secret; peers prove they know it (gossip/auth.py)
      and every frame carries a MAC. None: peer links are not authenticated.
    * `token`: the client token; a client must send `AUTH <token>` first.
    * `allow`: the SUBMIT allow-list, or None (any command).
    * `server_ssl` / `client_ssl`: `ssl.SSLContext`s for accepted connections
      and for the links this peer opens, or None (plain TCP).
    """

    secret: bytes | None = None
    token: bytes | None = None
    allow: AllowList | None = None
    server_ssl: object | None = None
    client_ssl: object | None = None
