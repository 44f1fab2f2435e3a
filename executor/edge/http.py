"""The HTTP side of a peer (`peerjobs node --http HOST:PORT`): Prometheus
`/metrics` (its collectors in executor/edge/metrics.py), a JSON API and the
dashboard, served by hypercorn inside the peer's own trio nursery. API
errors are JSON `{"error": <ErrorCode>, "message": ..., <the error's fields>}`.

Everything here *reads*: counters and the cluster view are read from
`node.statistics()` and `node.core` between awaits (the same thread as the
core loop, so each read sees one consistent state), and never changed. A job's
status and output are asked of the core with typed commands (`protocol.Status`,
`Result`, `Tail`, `ListJobs`) through `Node.ask`, and of another member on its
client port with the lines of those same typed commands
(executor/edge/http_jobs.py). No string from an HTTP request is ever parsed
or sent as a protocol line: a job id in a path or a query is checked with the
one job-id predicate (`protocol.is_job_id`), a state against the closed set
of states, a peer against membership, so `%0A`, `%0D` or a smuggled `AUTH`
can never become a line.

With a client token (`node.security.token`), every `/api/...` route needs
`Authorization: Bearer <token>` (401 otherwise); the page, `/healthz` and
`/metrics` (counts only, no commands or output) stay open
(docs/security.md).

Routes:

    GET /                 the dashboard (one HTML page, no external assets)
    GET /metrics          Prometheus text format
    GET /api/cluster      this peer, its counters, and every member with its load
    GET /api/history      members' queued/running sampled every 2 s, last 10 minutes
    GET /api/jobs         jobs submitted here, newest first; ?state=&array=&q=&limit= (1..http_jobs_limit_max)
    GET /api/jobs/<id>    one job of this home: status, tries, dependencies with their states, command,
                          environment names, directory, and its output (live while it runs)
    GET /api/cluster/jobs every member's jobs, newest first; ?state=&array=&peer=&limit=
    GET /api/cluster/jobs/<id>  one job of any home, as /api/jobs/<id> (what its home's lines carry)
    GET /healthz          "ok"

The cluster routes and the job rows: executor/edge/http_jobs.py.
"""

from __future__ import annotations

import collections
import hmac
import logging
import time
from importlib import resources
from urllib.parse import parse_qs

import trio

from executor.client import parse_peer
from executor.core import protocol
from executor.core.ids import parent_of, split_job_id
from executor.core.jobs import JobState
from executor.core.numbers import NumberError, parse_int
from executor.core.protocol import ErrorCode
from executor.edge.http_jobs import (
    _fail,
    _json,
    cluster_jobs,
    job_detail,
    recent_jobs,
)
from executor.edge.metrics import PROMETHEUS_CONTENT_TYPE, Metrics, NodeCollector  # noqa: F401 -- names kept here

log = logging.getLogger("peerjobs")

HISTORY_INTERVAL_S = 2.0
HISTORY_SAMPLES = 300  # 10 minutes
QUERY_FIELDS_MAX = 16  # query parameters parsed per request; the API knows five (state, array, peer, q, limit)
QUERY_TEXT_CHARS_MAX = 256  # `?q=`: searched in every record's command, in the core's thread


class HTTPListenError(Exception):
    """The HTTP port could not be bound."""


# ---------------------------------------------------------------------------
# Reading the peer


def cluster_view(node) -> dict:
    core = node.core
    peers = [parse_peer(line).to_dict() for line in core.peer_lines()]
    stats = node.statistics()
    alive = [p for p in peers if p["state"] == "alive" and p["slots"]]
    loads = [((p["queued"] or 0) + (p["running"] or 0)) / p["slots"] for p in alive]
    return {
        "peer": node.peer_id, "addr": node.addr, "time": time.time(), "peers": peers, "stats": stats,
        "balance": {
            "alive": len(alive), "members": len(peers),
            "queued": sum(p["queued"] or 0 for p in alive), "running": sum(p["running"] or 0 for p in alive),
            "slots": sum(p["slots"] or 0 for p in alive),
            "load_min": min(loads, default=0.0), "load_max": max(loads, default=0.0),
        },
    }


class History:
    """Members' load sampled every `HISTORY_INTERVAL_S`, for the chart."""

    def __init__(self, node) -> None:
        self.node = node
        self.samples: collections.deque = collections.deque(maxlen=HISTORY_SAMPLES)
        self._last: tuple[float, int] | None = None

    def sample(self) -> None:
        core = self.node.core
        if core is None:
            return
        now = time.time()
        peers = {}
        for line in core.peer_lines():
            p = parse_peer(line)
            peers[p.id] = {"state": p.state, "queued": p.queued, "running": p.running, "slots": p.slots}
        done = core.finished_total()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (done - self._last[1]) / (now - self._last[0])
        self._last = (now, done)
        self.samples.append({"t": round(now, 3), "peers": peers, "finished_per_s": round(rate, 2)})

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(HISTORY_INTERVAL_S)


def _filters(node, query: dict) -> tuple[str | None, str | None, int] | tuple[int, str, bytes]:
    """`state`, `array` and `limit` of a jobs query, checked; or the 400."""
    limit_max = node.config.http_jobs_limit_max
    try:
        limit = parse_int(query["limit"], "limit", lo=1, hi=limit_max) if "limit" in query else 50
    except NumberError as exc:
        return _fail(400, ErrorCode.BAD_REQUEST, str(exc))
    state = query.get("state") or None
    if state is not None and state not in _STATES:
        return _fail(400, ErrorCode.BAD_REQUEST, f"state {state[:32]!r} is not one of {', '.join(_STATES)}")
    array = query.get("array") or None
    if array is not None and (not protocol.is_job_id(array) or parent_of(array) is not None):
        return _fail(400, ErrorCode.BAD_ID, f"array {array[:64]!r} is not an array's id (like n1-5)")
    return state, array, min(limit, limit_max)


_STATES = tuple(state.value for state in JobState)


# ---------------------------------------------------------------------------
# The ASGI app


class App:
    def __init__(self, node, metrics: Metrics, history: History) -> None:
        self.node = node
        self.metrics = metrics
        self.history = history
        self.page = resources.files("executor.edge").joinpath("dashboard.html").read_bytes()

    def _authorized(self, scope) -> bool:
        """With a client token, the request must carry `Authorization: Bearer <token>`."""
        token = self.node.security.token
        if token is None:
            return True
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                scheme, _, given = bytes(value).strip().partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
                    return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            status, ctype, body = await self.route(scope)
        except Exception as exc:  # a bug here must not take the peer down
            log.exception("%s: HTTP %s failed", self.node.peer_id, scope.get("path"))
            status, ctype, body = _fail(500, ErrorCode.INTERNAL, str(exc))
        headers = [(b"content-type", ctype.encode()), (b"cache-control", b"no-store")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="peerjobs"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    async def route(self, scope) -> tuple[int, str, bytes]:
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            return _fail(405, ErrorCode.METHOD_NOT_ALLOWED, "only GET")
        node = self.node
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self.page
        if path == "/metrics":
            return 200, PROMETHEUS_CONTENT_TYPE, self.metrics.render()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path.startswith("/api/") and not self._authorized(scope):
            return _fail(401, ErrorCode.AUTH_REQUIRED, "this peer has a client token: send Authorization: "
                         "Bearer <token> (the dashboard: open /#token=<token>)")
        try:
            query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("ascii", "replace"),
                                                   errors="replace", max_num_fields=QUERY_FIELDS_MAX).items()}
        except ValueError:
            return _fail(400, ErrorCode.BAD_REQUEST, f"more than {QUERY_FIELDS_MAX} query parameters")
        if node.core is None:
            return _fail(503, ErrorCode.STARTING, "the peer is starting")
        if path == "/api/cluster":
            return 200, "application/json", _json(cluster_view(node))
        if path == "/api/history":
            return 200, "application/json", _json(
                {"interval_s": HISTORY_INTERVAL_S, "samples": list(self.history.samples)})
        if path in ("/api/jobs", "/api/cluster/jobs"):
            checked = _filters(node, query)
            if isinstance(checked[0], int):  # (status, content type, body): a 400
                return checked
            state, array, limit = checked
            if path == "/api/cluster/jobs":
                peer = query.get("peer") or None
                if peer is not None and peer != node.peer_id and node.core.member(peer) is None:
                    return _fail(400, ErrorCode.BAD_REQUEST, f"peer {peer[:64]!r} is not a member")
                return 200, "application/json", _json(
                    await cluster_jobs(node, state=state, array=array, peer=peer, limit=limit))
            if len(query.get("q", "")) > QUERY_TEXT_CHARS_MAX:
                return _fail(400, ErrorCode.BAD_REQUEST, f"q is longer than {QUERY_TEXT_CHARS_MAX} characters")
            return 200, "application/json", _json(recent_jobs(
                node, state=state, array=array, text=query.get("q") or None, limit=limit))
        # ASGI gives the path percent-decoded already: decoding it again
        # would let `%250A` become a newline.
        if path.startswith("/api/jobs/"):
            return await self.job(path[len("/api/jobs/"):], cluster=False)
        if path.startswith("/api/cluster/jobs/"):
            return await self.job(path[len("/api/cluster/jobs/"):], cluster=True)
        return _fail(404, ErrorCode.NOT_FOUND, f"no page {path[:64]}")

    async def job(self, job_id: str, *, cluster: bool) -> tuple[int, str, bytes]:
        """One job (`job_detail`): of this home (`/api/jobs/<id>`: another
        home's id gets the core's `not-home`), or of any home
        (`/api/cluster/jobs/<id>`: asked of the home its id names). The id is
        checked first and only ever travels as a field of a typed command."""
        if not protocol.is_job_id(job_id):
            shown = job_id[:64] + ("..." if len(job_id) > 64 else "")
            return _fail(400, ErrorCode.BAD_ID, f"{shown!r} is not a job id (like n1-42)")
        home = split_job_id(job_id)[0] if cluster else self.node.peer_id
        timeout = self.node.config.http_answer_timeout_s
        with trio.move_on_after(timeout):
            return await job_detail(self.node, job_id, home)
        return _fail(504, ErrorCode.TIMEOUT, f"the peer did not answer within {timeout:g} s")


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# ---------------------------------------------------------------------------
# Serving


async def serve_http(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `node.http` ("HOST:PORT") until cancelled. Sets `node.http_port`
    and `node.on_commit` (the fsync histogram), then reports started."""
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve

    host, port = node.http
    metrics = Metrics(node)
    history = History(node)
    node.metrics = metrics
    node.on_commit = metrics.observe_commit
    config = HyperConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("peerjobs.http")
    config.graceful_timeout = 0.5
    app = App(node, metrics, history)
    async with trio.open_nursery() as nursery:
        failed: OSError | None = None
        try:
            binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status, mode="asgi"))
        except* OSError as group:
            failed = _first(group)
        if failed is not None:
            raise HTTPListenError(f"cannot serve HTTP on {host}:{port}: {failed.strerror or failed}")
        bound = binds[0].rpartition(":")[2] if binds else str(port)
        node.http_port = int(bound)
        log.info("%s: dashboard on http://%s:%s/ (metrics at /metrics)", node.peer_id,
                 host if ":" not in host else f"[{host}]", bound)
        nursery.start_soon(history.run)
        task_status.started(node.http_port)
