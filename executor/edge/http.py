"""The HTTP side of a peer (`peerjobs node --http HOST:PORT`): Prometheus
`/metrics`, a JSON API and the dashboard, served by hypercorn inside the
peer's own trio nursery.

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
import heapq
import hmac
import json
import logging
import time
from importlib import resources
from urllib.parse import parse_qs

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from executor.core import protocol
from executor.client import parse_peer, parse_status
from executor.core.numbers import NumberError, parse_int

log = logging.getLogger("peerjobs")

HISTORY_INTERVAL_S = 2.0
HISTORY_SAMPLES = 300  # 10 minutes
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUERY_FIELDS_MAX = 16  # query parameters parsed per request; the API knows three
QUERY_TEXT_CHARS_MAX = 256  # `?q=`: searched in every record's command, in the core's thread
_JOB_COUNTERS = ("submitted", "finished", "failed", "cancelled", "started", "reexecuted", "reissued",
                 "busy_rejections", "results_duplicate")
_MEMBERSHIP_EVENTS = ("declared_dead", "refutations", "rejoins", "members_evicted", "members_refused",
                      "pauses_detected", "probes_failed")


class HTTPListenError(Exception):
    """The HTTP port could not be bound."""


# ---------------------------------------------------------------------------
# Metrics


class NodeCollector:
    """Reads the peer's counters on every scrape (nothing is copied in between)."""

    def __init__(self, node) -> None:
        self.node = node

    def collect(self):
        node = self.node
        if node.core is None:
            return
        stats = node.statistics()
        yield InfoMetricFamily("peerjobs_peer", "This peer", value={
            "peer": node.peer_id, "addr": node.addr, "incarnation": str(stats["incarnation"])})
        for name in _JOB_COUNTERS:
            c = CounterMetricFamily(f"peerjobs_jobs_{name}", f"Jobs {name.replace('_', ' ')} (counted at this peer)")
            c.add_metric([], stats.get(f"jobs_{name}", 0))
            yield c
        steals = CounterMetricFamily("peerjobs_steals", "Jobs moved by work stealing / handoff",
                                     labels=["direction"])
        steals.add_metric(["in"], stats["jobs_steals_in"])
        steals.add_metric(["out"], stats["jobs_steals_out"])
        yield steals
        batches = CounterMetricFamily("peerjobs_commit_batches", "Group commits (synced LevelDB batches)")
        batches.add_metric([], stats["jobs_batches"])
        yield batches
        for name, key, doc in (
            ("queue_length", "queued", "Jobs queued at this peer"),
            ("running_jobs", "running", "Jobs running at this peer"),
            ("slots", "slots", "Jobs this peer runs at once"),
            ("records", "records", "Job records kept at this peer (its home jobs)"),
            ("outbox", "outbox", "Results not yet acknowledged by their home"),
            ("handoffs_pending", "lends", "Handoffs sent and not yet acknowledged"),
            ("client_connections", "clients", "Open client connections"),
            ("incarnation", "incarnation", "This peer's incarnation (restarts)"),
        ):
            g = GaugeMetricFamily(f"peerjobs_{name}", doc)
            g.add_metric([], stats[key])
            yield g
        members = GaugeMetricFamily("peerjobs_members", "Members of the cluster by state", labels=["state"])
        counts = collections.Counter(m.state.value for m in node.core.cluster.membership.members())
        for state in ("alive", "suspect", "dead"):
            members.add_metric([state], counts.get(state, 0))
        yield members
        events = CounterMetricFamily("peerjobs_membership_changes", "Membership events seen by this peer",
                                     labels=["event"])
        for name in _MEMBERSHIP_EVENTS:
            events.add_metric([name], stats.get(f"gossip_{name}", 0))
        yield events
        msgs = CounterMetricFamily("peerjobs_gossip_messages", "Membership messages", labels=["direction", "type"])
        for key, value in stats.items():
            for direction in ("sent", "received"):
                if key.startswith(f"gossip_{direction}_"):
                    msgs.add_metric([direction, key[len(f"gossip_{direction}_"):]], value)
        yield msgs
        links = CounterMetricFamily("peerjobs_link_events", "Peer link counters (frames, bytes, drops)",
                                    labels=["event"])
        for key, value in stats.items():
            if key.startswith("link_"):
                links.add_metric([key[5:]], value)
        yield links


class Metrics:
    """One registry per peer (so that tests may run several in one process)."""

    def __init__(self, node) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(NodeCollector(node))
        self.commit_writes = Histogram(
            "peerjobs_commit_batch_writes", "Writes in one synced batch (group commit size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384, 65536), registry=self.registry)
        self.commit_seconds = Histogram(
            "peerjobs_commit_seconds", "Time to write and fsync one batch",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)

    def observe_commit(self, writes: int, seconds: float) -> None:
        self.commit_writes.observe(writes)
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ---------------------------------------------------------------------------
# Reading the peer


def cluster_view(node) -> dict:
    core = node.core
    peers = [parse_peer(line).to_dict() for line in core.cluster.peer_lines(core.load)]
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
    records = node.core.records
    counts = collections.Counter(r.state.value for r in records.values())
    matching = (r for r in records.values()
                if (not state or r.state.value == state)
                and (not text or text in r.job_id or text in r.spec.command))
    out = [job_row(r) for r in heapq.nlargest(limit, matching, key=_newest)]
    return {"peer": node.peer_id, "counts": dict(counts), "total": len(records), "jobs": out}


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
        for line in core.cluster.peer_lines(core.load):
            p = parse_peer(line)
            peers[p.id] = {"state": p.state, "queued": p.queued, "running": p.running, "slots": p.slots}
        done = core.counters.finished + core.counters.failed
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
            status, ctype, body = 500, "application/json", _json({"error": "internal", "message": str(exc)})
        headers = [(b"content-type", ctype.encode()), (b"cache-control", b"no-store")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="peerjobs"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    async def route(self, scope) -> tuple[int, str, bytes]:
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            return 405, "application/json", _json({"error": "method-not-allowed", "message": "only GET"})
        node = self.node
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self.page
        if path == "/metrics":
            return 200, PROMETHEUS_CONTENT_TYPE, self.metrics.render()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path.startswith("/api/") and not self._authorized(scope):
            return 401, "application/json", _json({
                "error": "auth-required",
                "message": "this peer has a client token: send Authorization: Bearer <token> "
                           "(the dashboard: open /#token=<token>)"})
        try:
            query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("ascii", "replace"),
                                                   errors="replace", max_num_fields=QUERY_FIELDS_MAX).items()}
        except ValueError:
            return 400, "application/json", _json(
                {"error": "bad-request", "message": f"more than {QUERY_FIELDS_MAX} query parameters"})
        if node.core is None:
            return 503, "application/json", _json({"error": "starting", "message": "the peer is starting"})
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
                return 400, "application/json", _json({"error": "bad-request", "message": str(exc)})
            if len(query.get("q", "")) > QUERY_TEXT_CHARS_MAX:
                return 400, "application/json", _json(
                    {"error": "bad-request", "message": f"q is longer than {QUERY_TEXT_CHARS_MAX} characters"})
            return 200, "application/json", _json(recent_jobs(
                node, state=query.get("state") or None, text=query.get("q") or None, limit=min(limit, limit_max)))
        if path.startswith("/api/jobs/"):
            # ASGI gives the path percent-decoded already: decoding it again
            # would let `%250A` become a newline.
            return await self.job(path[len("/api/jobs/"):])
        return 404, "application/json", _json({"error": "not-found", "message": f"no page {path[:64]}"})

    async def job(self, job_id: str) -> tuple[int, str, bytes]:
        """One job: status fields from the core's record, output from a typed
        `Result` asked through `Node.ask` (one reply: header and body from
        one snapshot). The id is checked first and only ever travels as a
        field of a typed command."""
        if not protocol.is_job_id(job_id):
            shown = job_id[:64] + ("..." if len(job_id) > 64 else "")
            return 400, "application/json", _json(
                {"error": "bad-id", "message": f"{shown!r} is not a job id (like n1-42)"})
        with trio.move_on_after(self.node.config.http_answer_timeout_s):
            return await self._job(job_id)
        return 504, "application/json", _json(
            {"error": "timeout", "message": f"the peer did not answer within {self.node.config.http_answer_timeout_s:g} s"})

    async def _job(self, job_id: str) -> tuple[int, str, bytes]:
        node = self.node
        record = node.core.records.get(job_id)
        if record is None:
            # The core's own answer says why (not-found, or not-home and where).
            reply = await node.ask(protocol.Status(job_id))
            record = node.core.records.get(job_id)  # submitted meanwhile: the reply is OK
            if record is None:
                return _error_reply(reply if reply.startswith(b"ERR ") else b"ERR not-found no such job\n")
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
    """An `ERR <code> <message>` line of the core as an HTTP error."""
    code, _, message = reply.decode(errors="replace").strip().removeprefix("ERR ").partition(" ")
    status = 404 if code in ("not-found", "not-home") else 503 if code == "busy" else 502
    return status, "application/json", _json({"error": code, "message": message})


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
