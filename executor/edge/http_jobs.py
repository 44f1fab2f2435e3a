"""Jobs over HTTP (executor/edge/http.py serves them): the rows of
`/api/jobs` and `/api/cluster/jobs`, one job's page, and how a peer is
asked — this one through `Node.ask`, a member through its client port.

The cluster routes ask the members through their *client port* (the text
protocol: `LIST`, `STATUS`, `RESULT`, `TAIL`), not through their HTTP
port: the client port is the one address every member serves and gossips
(peer links use it too), while `--http` is optional, is not gossiped, and
stays on loopback unless the operator passes `--insecure`
(executor/settings_security.py), so another host's dashboard is normally
unreachable by design. The request's bearer token was checked against this
peer's token, which is the cluster's ("same file everywhere",
docs/security.md), and is sent as `AUTH`; TLS uses the context peer links
use. Every member is asked at once, at most `http_fanout_members_max` of
them, within `http_fanout_timeout_s`; a member that does not answer is
listed as such and never fails the page. What travels on those lines is
built only from values checked here: a state from the closed set of
states, ids that pass `protocol.is_job_id` (and member ids from
membership), numbers parsed by the one parser; nothing else of a request.
Limits of what a member's lines carry: LIST lines end with the command
(`command=`), STATUS lines do not, so another home's job page has no
command of its own (the dashboard shows the one its row listed); no line
carries the environment or the directory: those come only from this
peer's own records.
"""

from __future__ import annotations

import json

import trio

from executor.client import parse_error, parse_status
from executor.client.aio import AsyncClient
from executor.client.lines import list_line
from executor.client.replies import LINE, LINES, RESULT, PeerError, ReplyReader
from executor.core import protocol
from executor.core.ids import order_key, parent_of, split_job_id
from executor.core.jobs import JobState
from executor.core.protocol import ErrorCode

# ---------------------------------------------------------------------------
# Rows


def job_row(record) -> dict:
    """A home record as a row: what STATUS says of it, and what only its
    home knows (the dependencies it was submitted with)."""
    spec = record.spec
    state = record.state
    runtime = (round((record.finished_at - record.started_at) * 1000)
               if record.finished_at is not None and record.started_at is not None else None)
    return {
        "id": record.job_id, "home": split_job_id(record.job_id)[0], "parent": parent_of(record.job_id),
        "state": state.value, "attempt": record.attempt,
        "executor": record.executor or None, "exit": record.exit_code,
        "reason": record.reason if state.final else None,
        "last": record.reason if not state.final else None,  # why the previous try failed
        "submitted": record.submitted_at, "runtime_ms": runtime,
        "try": [record.tries, spec.tries] if spec.retries else None, "priority": spec.priority,
        "due": record.due_at if state is JobState.SCHEDULED else None, "slots": spec.slots,
        "after": list(spec.after), "after_any": list(spec.after_any),  # as submitted (--after, --after-any)
        "command": spec.command if spec.kind == "sh" else f"(sleep {spec.sleep_ms} ms)",
    }


def status_row(home: str, status) -> dict:
    """A member's LIST/STATUS line (`JobStatus`) as a row: the fields its
    line carries; None where it says nothing (a STATUS line's command)."""
    tries = status.tries
    return {
        "id": status.job_id, "home": home, "parent": parent_of(status.job_id), "state": status.state,
        "attempt": status.attempt, "executor": None if status.executor == "-" else status.executor,
        "exit": status.exit_code, "reason": status.reason if status.final else None,
        "last": status.fields.get("last"), "submitted": status.submitted, "runtime_ms": status.runtime_ms,
        "try": None if tries is None else list(tries), "priority": status.priority, "due": status.due,
        "slots": int(status.fields.get("slots", "1")),  # a line names slots only when not 1
        "waiting_for": status.after, "command": status.command,
    }


def recent_jobs(node, *, state: str | None = None, array: str | None = None, text: str | None = None,
                limit: int = 50) -> dict:
    core = node.core
    if array is None:
        records = core.find_jobs(limit, state=state, text=text, key=_newest)
    else:
        # The array's elements rank above every other record, so the `limit`
        # largest hold the newest `limit` elements; the rest are dropped.
        records = [r for r in core.find_jobs(limit, state=state, text=text,
                                             key=lambda r: (parent_of(r.job_id) == array, *_newest(r)))
                   if parent_of(r.job_id) == array]
    out = [job_row(r) for r in records]
    return {"peer": node.peer_id, "counts": dict(core.job_counts()), "total": core.job_total(), "jobs": out}


def _newest(record) -> tuple[float, tuple[int, int]]:
    return record.submitted_at, order_key(record.job_id)


def _row_order(row: dict) -> tuple[float, tuple[int, int]]:
    return row["submitted"] or 0.0, order_key(row["id"])


# ---------------------------------------------------------------------------
# Asking a peer: this one through `Node.ask`, a member through its client port


class NoAnswer(Exception):
    """A peer that could not be asked, or did not answer in time; `code` is
    what the page shows (`unreachable`, `timeout`, `dead`, or the ERR code of
    a refused AUTH)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_SHAPES = {protocol.Status: LINE, protocol.Result: RESULT, protocol.Tail: RESULT, protocol.ListJobs: LINES}
_VERBS = {protocol.Status: "STATUS", protocol.Result: "RESULT", protocol.Tail: "TAIL"}


def _line(command) -> str:
    """The line of a typed command, made only of checked values: a job id
    that passes the one job-id predicate, or `list_line`'s checked count,
    state and array."""
    if type(command) is protocol.ListJobs:
        return list_line(command.count, command.state, command.array)
    if not protocol.is_job_id(command.job_id):
        raise ValueError(f"{command.job_id[:64]!r} is not a job id")
    return f"{_VERBS[type(command)]} {command.job_id}"


async def ask_peer(node, peer_id: str, command):
    """`command`'s reply (a client `Reply`) from `peer_id`. This peer answers
    through `Node.ask`, exactly as a client would be answered; a member
    through its client port, one connection per question, within
    `http_fanout_timeout_s`. Raises `NoAnswer`."""
    shape = _SHAPES[type(command)]
    if peer_id == node.peer_id:
        reader = ReplyReader()
        reader.feed(await node.ask(command))
        return reader.next(shape)
    member = node.core.member(peer_id)
    if member is None:
        raise NoAnswer("not-a-member", f"{peer_id} is not a member this peer knows")
    if member.state == "dead":
        raise NoAnswer("dead", f"membership declared {peer_id} dead: not asked")
    cfg = node.config
    token = node.security.token
    client = AsyncClient(member.addr, timeout_s=cfg.http_fanout_timeout_s,
                         token=token.decode() if token is not None else None, ssl_context=node.security.client_ssl)
    try:
        with trio.fail_after(cfg.http_fanout_timeout_s):
            async with _limiter(node):
                await client.connect()  # and AUTH, answered before anything else is sent
                await client.stream.send_all(_line(command).encode() + b"\n")
                return await _read_bounded(client.stream, shape, cfg.http_fanout_reply_bytes_max, peer_id)
    except trio.TooSlowError:
        raise NoAnswer("timeout", f"{peer_id} at {member.addr} did not answer within "
                                  f"{cfg.http_fanout_timeout_s:g} s") from None
    except PeerError as exc:  # AUTH refused: the member has another token
        raise NoAnswer(str(exc.code), f"{peer_id} at {member.addr}: {exc.message}") from None
    except (OSError, ValueError) as exc:  # refused, reset, closed, or a reply that does not parse
        raise NoAnswer("unreachable", f"{peer_id} at {member.addr}: {exc}") from None
    finally:
        await client.aclose()


async def _read_bounded(stream, shape: str, bytes_max: int, peer_id: str):
    """One reply of `shape` from `stream`, reading at most `bytes_max` bytes."""
    reader = ReplyReader()
    received = 0
    while (reply := reader.next(shape)) is None:
        data = await stream.receive_some(_RECEIVE_BYTES)
        if not data:
            raise ConnectionError("the connection closed before the reply was whole")
        received += len(data)
        if received > bytes_max:
            raise NoAnswer("reply-too-large", f"{peer_id} sent more than {bytes_max} bytes for one reply "
                                              f"(http_fanout_reply_bytes_max)")
        reader.feed(data)
    return reply


_RECEIVE_BYTES = 65536


def _limiter(node) -> trio.CapacityLimiter:
    """The peer's one bound on connections open to members
    (`http_fanout_connections_max`), made at its first use."""
    limiter = getattr(node, "http_fanout_limiter", None)
    if limiter is None:
        limiter = node.http_fanout_limiter = trio.CapacityLimiter(node.config.http_fanout_connections_max)
    return limiter


def _reply_error(reply) -> tuple[int, str, bytes]:
    return _error_reply(f"ERR {reply.code} {reply.message}".encode())


def _output(reply) -> dict:
    status = parse_status(reply.text)
    return {"stdout": reply.stdout.decode(errors="replace"), "stderr": reply.stderr.decode(errors="replace"),
            "truncated": status.fields.get("truncated") == "yes"}


# ---------------------------------------------------------------------------
# Cluster-wide jobs


def _members_to_ask(node, peer: str | None, array: str | None) -> list[dict]:
    """This peer and its members, as the reply lists them, each marked with
    why it will not be asked (dead, beyond the bound) or as not answered
    yet (`timeout`, until its answer replaces it)."""
    cfg = node.config
    others = sorted((m for m in node.core.members() if not m.is_self), key=lambda m: m.id)
    peers = [{"peer": node.peer_id, "addr": node.addr, "state": "alive", "self": True}]
    peers += [{"peer": m.id, "addr": m.addr, "state": str(m.state), "self": False} for m in others]
    if peer is not None:
        peers = [p for p in peers if p["peer"] == peer]
    if array is not None:  # an array's elements live at its home, the parent's
        peers = [p for p in peers if p["peer"] == split_job_id(array)[0]]
    asked = 0
    for p in peers:
        if p["state"] == "dead":
            p.update(answered=False, error="dead", message="membership declared it dead: not asked")
        elif not p["self"] and asked >= cfg.http_fanout_members_max:
            p.update(answered=False, error="not-asked", message=f"beyond http_fanout_members_max "
                     f"({cfg.http_fanout_members_max}) members asked at once: filter by peer")
        else:
            asked += not p["self"]
            p.update(answered=False, error="timeout",
                     message=f"did not answer within {cfg.http_fanout_timeout_s:g} s")
    return peers


async def _ask_safely(node, peer_id: str, command, parse, into: dict) -> None:
    """`parse(reply)` merged into `into`; a peer that does not answer, answers
    ERR, or answers what does not parse sets `error` and `message` instead:
    that peer's fault is shown, and never fails the page."""
    try:
        reply = await ask_peer(node, peer_id, command)
        if not reply.ok:
            into.update(error=reply.code, message=reply.message)
            return
        into.update(parse(reply))
    except NoAnswer as exc:
        into.update(error=exc.code, message=exc.message)
    except ValueError as exc:
        into.update(error="bad-reply", message=f"a reply that does not parse: {str(exc)[:200]}")


async def cluster_jobs(node, *, state: str | None, array: str | None, peer: str | None, limit: int) -> dict:
    """Every member's latest `limit` jobs (this peer's too), asked at once with
    `LIST`, merged newest first. Each member is listed with whether it
    answered; one that did not never fails the page."""
    cfg = node.config
    peers = _members_to_ask(node, peer, array)
    listing = protocol.ListJobs(min(limit, cfg.list_max), state, array)
    summary: dict = {}

    def rows_of(p: dict):
        def parse(reply) -> dict:
            rows = [status_row(p["peer"], parse_status(line)) for line in reply.lines]
            for row in rows if p["self"] else ():  # what only this home's records hold
                record = node.core.job(row["id"])
                if record is not None:
                    mine = job_row(record)
                    row.update(command=mine["command"], after=mine["after"], after_any=mine["after_any"])
            return {"answered": True, "error": None, "message": None, "jobs": rows}
        return parse

    def array_of(reply) -> dict:
        status = parse_status(reply.text)
        return {"state": status.state, "fields": status.fields}

    with trio.move_on_after(cfg.http_fanout_timeout_s + 1.0):  # each ask has its own bound; this one is a backstop
        async with trio.open_nursery() as nursery:
            for p in peers:
                if p["error"] == "timeout":
                    nursery.start_soon(_ask_safely, node, p["peer"], listing, rows_of(p), p)
            if array is not None:
                nursery.start_soon(_ask_safely, node, split_job_id(array)[0], protocol.Status(array), array_of, summary)
    rows = [row for p in peers for row in p.pop("jobs", ())]
    for p in peers:
        if p["answered"]:
            p["jobs"] = sum(row["home"] == p["peer"] for row in rows)
    rows.sort(key=_row_order, reverse=True)
    out = {"peer": node.peer_id, "peers": peers, "jobs": rows[:limit]}
    if array is not None:
        out["array"] = {"id": array, **summary}
    return out


def _record_fields(record) -> dict:
    """What only a job's home record holds, for its page."""
    spec = record.spec
    return {
        "command": job_row(record)["command"], "slots": spec.slots, "cwd": spec.cwd or None,
        # Names only: values are often credentials, and the text protocol shows none.
        "env": [name for name, _ in spec.env], "timeout_s": spec.timeout_s, "retries": spec.retries,
        "backoff_s": spec.backoff_s, "keep_s": spec.keep_s,
    }


async def job_detail(node, job_id: str, home: str) -> tuple[int, str, bytes]:
    """One job as its home `home` tells it: STATUS, then RESULT once final or
    TAIL (from the peer that runs it) while it runs; the states of its
    dependencies from their homes; and, for a job of this home, what only
    the record holds (command, slots, environment names, directory)."""
    try:
        reply = await ask_peer(node, home, protocol.Status(job_id))
        if not reply.ok:
            return _reply_error(reply)
        status = parse_status(reply.text)
        out = status_row(home, status) if not status.is_parent else None
    except NoAnswer as exc:
        if exc.code == "not-a-member":  # no such home: no such job, as far as this peer can know
            return _fail(404, ErrorCode.NOT_FOUND, f"job {job_id}: {exc.message}", home=home)
        # The home's state as the cluster table lists it (unreachable, timeout, dead).
        return _fail(502, exc.code, exc.message, home=home)
    except ValueError as exc:
        return _fail(502, "bad-reply", f"{home} answered what does not parse: {str(exc)[:200]}", home=home)
    if out is None:
        kind = "array" if "array" in status.fields else "periodic"
        return 200, "application/json", _json({"id": status.job_id, "home": home, "state": status.state,
                                               "kind": kind, "fields": status.fields})
    out["kind"] = "job"
    record = node.core.job(job_id) if home == node.peer_id else None
    if record is not None:
        out.update(_record_fields(record))
        deps = [(d, "afterok") for d in record.spec.after] + [(d, "afterany") for d in record.spec.after_any]
    else:  # another home's line names only what it still waits for
        deps = [(d, None) for d in status.after if protocol.is_job_id(d)]
    dependencies = [{"id": d, "type": kind, "state": None} for d, kind in deps[:_DEPENDENCIES_SHOWN_MAX]]
    output: dict = {}
    with trio.move_on_after(node.config.http_fanout_timeout_s + 1.0):
        async with trio.open_nursery() as nursery:
            if status.final:
                nursery.start_soon(_ask_safely, node, home, protocol.Result(job_id), _final_output, output)
            elif status.state == JobState.RUNNING.value and out["executor"]:
                nursery.start_soon(_ask_safely, node, out["executor"], protocol.Tail(job_id, False),
                                   _live_output, output)
            for entry in dependencies:
                nursery.start_soon(_ask_safely, node, split_job_id(entry["id"])[0], protocol.Status(entry["id"]),
                                   _state_of, entry)
    if "error" in output:
        output = {"output_error": output["message"]}
    out.update(output, dependencies=dependencies)
    return 200, "application/json", _json(out)


def _final_output(reply) -> dict:
    return {**_output(reply), "output": "final"}


def _live_output(reply) -> dict:
    return {**_output(reply), "output": "live"}


def _state_of(reply) -> dict:
    return {"state": parse_status(reply.text).state}


_DEPENDENCIES_SHOWN_MAX = 64  # executor/core/spec.py DEPENDENCIES_MAX: every one a job may have




# ---------------------------------------------------------------------------
# Replies


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


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
