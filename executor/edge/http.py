"""The HTTP side of a peer (`peerjobs node --http HOST:PORT`): Prometheus
`/metrics` (its collectors in executor/edge/metrics.py), a JSON API and the
dashboard, served by hypercorn inside the peer's own trio nursery. API
errors are JSON `{"error": <ErrorCode>, "message": ..., <the error's fields>}`.

Everything here *reads*: counters and the cluster view are read from
`node.statistics()` and `node.core` between awaits (the same thread as the
core loop, so each read sees one consistent state), and never changed. A job's
status is read from the core's record; its output is asked of the core with a
typed `protocol.Result` through `Node.ask`. No string from an HTTP request is
ever written to the text protocol: the job id in a path is checked with the
one job-id predicate (`protocol.is_job_id`) and travels as a field of a typed
command, so `%0A`, `%0D` or a smuggled `AUTH` can never become a line.

With a client token (`node.security.token`), every `/api/...` route needs
`Authorization: Bearer <token>` (401 otherwise); the page, `/healthz` and
`/metrics` (counts only, no commands or output) stay open
(docs/security.md).

Routes:

    GET /                 the dashboard (one HTML page, no external assets)
    GET /metrics          Prometheus text format
    GET /api/cluster      this peer, its counters, and every member with its load
    GET /api/history      members' queued/running sampled every 2 s, last 10 minutes
    GET /api/jobs         jobs submitted here, newest first; ?state=&q=&limit= (1..http_jobs_limit_max)
    GET /api/jobs/<id>    one job's status, command and output
    GET /healthz          "ok"
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import time
from importlib import resources
from urllib.parse import parse_qs

import trio

from executor.client import parse_error, parse_peer, parse_status
from executor.core import protocol
from executor.core.numbers import NumberError, parse_int
from executor.core.protocol import ErrorCode
from executor.edge.metrics import PROMETHEUS_CONTENT_TYPE, Metrics, NodeCollector  # noqa: F401 -- names kept here

log = logging.getLogger("peerjobs")

HISTORY_INTERVAL_S = 2.0
HISTORY_SAMPLES = 300  # 10 minutes
QUERY_FIELDS_MAX = 16  # query parameters parsed per request; the API knows three
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


def job_row(record) -> dict:
    spec = record.spec
    runtime = (round((record.finished_at - record.started_at) * 1000)
               if record.finished_at is not None and record.started_at is not None else None)
    return {
        "id": record.job_id, "state": record.state.value, "attempt": record.attempt,
        "executor": record.executor or None, "exit": record.exit_code, "reason": record.reason,
        "submitted": record.submitted_at, "runtime_ms": runtime,
        "command": spec.command if spec.kind == "sh" else f"(sleep {spec.sleep_ms} ms)",
    }


def recent_jobs(node, *, state: str | None = None, text: str | None = None, limit: int = 50) -> dict:
    core = node.core
    out = [job_row(r) for r in core.find_jobs(limit, state=state, text=text, key=_newest)]
    return {"peer": node.peer_id, "counts": dict(core.job_counts()), "total": core.job_total(), "jobs": out}


def _newest(record) -> tuple[float, int]:
    return record.submitted_at, protocol.split_job_id(record.job_id)[1]


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
        if path == "/api/jobs":
            limit_max = node.config.http_jobs_limit_max
            try:
                limit = parse_int(query["limit"], "limit", lo=1, hi=limit_max) if "limit" in query else 50
            except NumberError as exc:
                return _fail(400, ErrorCode.BAD_REQUEST, str(exc))
            if len(query.get("q", "")) > QUERY_TEXT_CHARS_MAX:
                return _fail(400, ErrorCode.BAD_REQUEST, f"q is longer than {QUERY_TEXT_CHARS_MAX} characters")
            return 200, "application/json", _json(recent_jobs(
                node, state=query.get("state") or None, text=query.get("q") or None, limit=min(limit, limit_max)))
        if path.startswith("/api/jobs/"):
            # ASGI gives the path percent-decoded already: decoding it again
            # would let `%250A` become a newline.
            return await self.job(path[len("/api/jobs/"):])
        return _fail(404, ErrorCode.NOT_FOUND, f"no page {path[:64]}")

    async def job(self, job_id: str) -> tuple[int, str, bytes]:
        """One job: status fields from the core's record, output from a typed
        `Result` asked through `Node.ask` (one reply: header and body from
        one snapshot). The id is checked first and only ever travels as a
        field of a typed command."""
        if not protocol.is_job_id(job_id):
            shown = job_id[:64] + ("..." if len(job_id) > 64 else "")
            return _fail(400, ErrorCode.BAD_ID, f"{shown!r} is not a job id (like n1-42)")
        with trio.move_on_after(self.node.config.http_answer_timeout_s):
            return await self._job(job_id)
        return _fail(504, ErrorCode.TIMEOUT,
                     f"the peer did not answer within {self.node.config.http_answer_timeout_s:g} s")

    async def _job(self, job_id: str) -> tuple[int, str, bytes]:
        node = self.node
        record = node.core.job(job_id)
        if record is None:
            # The core's own answer says why (not-found, or not-home and where).
            reply = await node.ask(protocol.Status(job_id))
            record = node.core.job(job_id)  # submitted meanwhile: the reply is OK
            if record is None:
                return _error_reply(reply if reply.startswith(b"ERR ") else protocol.err(ErrorCode.NOT_FOUND, "no such job"))
        out = job_row(record)
        if record.state.final:
            reply = await node.ask(protocol.Result(job_id))
            if not reply.startswith(b"OK "):
                return _error_reply(reply)
            head, _, body = reply.partition(b"\n")
            fields = parse_status(head[3:].decode(errors="replace")).fields
            n, m = int(fields.get("stdout", 0)), int(fields.get("stderr", 0))
            out.update(stdout=body[:n].decode(errors="replace"), stderr=body[n:n + m].decode(errors="replace"),
                       truncated=fields.get("truncated") == "yes")
        return 200, "application/json", _json(out)


def _error_reply(reply: bytes) -> tuple[int, str, bytes]:
    """An `ERR <code> [key=value ...] <message>` line of the core as an HTTP
    error; its fields (not-home's `home`) become members of the JSON body."""
    error = parse_error(reply.decode(errors="replace"))
    code = error.code
    status = 404 if code in (ErrorCode.NOT_FOUND, ErrorCode.NOT_HOME) else 503 if code == ErrorCode.BUSY else 502
    return _fail(status, code, error.message, **error.fields)


def _fail(status: int, code: ErrorCode, message: str, **fields: str) -> tuple[int, str, bytes]:
    """An HTTP error: JSON `{"error": <code>, "message": ..., <fields>}`."""
    return status, "application/json", _json({"error": code, "message": message, **fields})


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


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
