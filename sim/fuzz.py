"""`python -m sim fuzz`: hostile input against real peers, through every door.

    python -m sim fuzz --inputs 1000000 --seed 1            # the benchmark (long)
    python -m sim fuzz --inputs 300 --seed 1 --json         # what CI runs (tests/test_fuzz.py)

Starts `--peers` real `peerjobs node` processes on loopback (each with its
HTTP port), then throws `--inputs` seeded, generated hostile inputs at their
three doors, in batches:

* the **text port**: lines with numbers of thousands of digits, exponents,
  signs and non-ASCII digits (`LIST`, `WAIT`, `SUBMIT --timeout`, bare
  numbers), malformed and huge job ids, commands with control characters,
  raw bytes, lines cut anywhere; every connection ends with `PEERS`, which
  must still be answered (the connection stays usable);
* the **peer port**: bad hello lines, and after a well-formed hello,
  garbage bytes, frames of random CBOR, frames with bad lengths, and
  well-typed messages holding hostile values (5,000-digit ids, CR in a
  command, NaN, huge integers);
* the **HTTP port**: job paths holding percent-encoded newlines, CR, smuggled
  `SUBMIT`/`AUTH` lines and huge ids; `?limit=` with hostile numbers; random
  `Authorization` headers. No HTTP request may submit a job: each peer's
  `jobs_submitted` must not move during the HTTP phase.

After each batch every peer must still be running (a dead one is a crash: it
is counted and restarted), list every real peer `alive` in `PEERS`, and run a
job end to end (`SUBMIT`, `WAIT`, `RESULT`). The summary counts inputs per
door, crashes (target 0), restarts, handler errors the peers contained
(`link_handler_errors`, bugs; target 0), HTTP 5xx answers, unanswered text
connections, HTTP-submitted jobs and failed health checks; any of them
non-zero exits 1. A benchmark, not a CI test: CI runs a bounded number.
Generated commands are harmless on purpose (`printf`, `true`): the fuzzer
tests parsers, not the shell.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import types
import typing
import urllib.request
from urllib.parse import quote

import cbor2
import trio

from executor.client import AsyncClient
from executor.protocol import command_text_problem
from gossip import wire
from sim.bench import free_port
from sim.cluster import PeerProc, ProcessCluster

IO_TIMEOUT_S = 5.0
"""Longest one input may take (connect, send, read to EOF); past it the input
is abandoned and counted as `timeouts` (a peer that hangs shows as that)."""

HEALTH_TIMEOUT_S = 20.0
"""Longest the health check of one peer may take after a batch (membership
converging, a job run end to end)."""

CONCURRENCY_MAX = 64
"""Largest --concurrency: connections in flight at once from the fuzzer."""

_DIGITS_OTHER = "٣۳३০੩૩୩௩౩೩൩๓໓༣၃០᠓０²³¹½"
_CONTROL = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u2028", "\u2029"]
_PRINTABLE = "abcxyz019 -_.:/=%+@,;&|$'\"`\\()[]{}<>*?!#~^é✓"
_VERBS = ("STATUS ", "WAIT ", "RESULT ", "CANCEL ", "r", "r ")
_OK_PEERS = re.compile(rb"OK [0-9]+ peers\n")


def _say(*parts) -> None:
    print("fuzz:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Generation (seeded: one random.Random drives everything)


class Gen:
    def __init__(self, rng: random.Random, pwned: str = "/nonexistent/pwned") -> None:
        """`pwned`: the file a smuggled `SUBMIT touch` would create (it must never exist)."""
        self.rng = rng
        self.pwned = pwned

    def number(self) -> str:
        r = self.rng
        kind = r.randrange(8)
        if kind == 0:
            return "9" * r.choice([20, 400, 4300, 4301, 5000, r.randrange(1, 20_000)])
        if kind == 1:
            return r.choice(["1e999", "-1e999", "1e-999", "1e+06", "nan", "-nan", "inf", "-inf", "Infinity", "+5",
                             "-0", "0", "0" * 40 + "1", "1_000", "0x10", ".", "1.", "1e", "1e+", "٣", "²"])
        if kind == 2:
            return "".join(r.choice(_DIGITS_OTHER + "0123456789.eE+-_") for _ in range(r.randrange(1, 12)))
        if kind == 3:
            return str(r.randrange(-(2**80), 2**80))
        if kind == 4:
            return f"{r.choice(['', '-', '+'])}{r.randrange(10**6)}e{r.choice(['', '-', '+'])}{r.randrange(10**5)}"
        return str(r.randrange(-5, 10**r.randrange(1, 25)))

    def text(self, n_max: int = 8) -> str:
        r = self.rng
        pool = (_CONTROL, _PRINTABLE, _DIGITS_OTHER)
        return "".join(r.choice(r.choice(pool)) for _ in range(r.randrange(n_max + 1)))

    def job_id(self) -> str:
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            return "a1-" + self.number()
        if kind == 1:
            return r.choice(["n1", "a1", "x", "my-host.7001", ""]) + "-" + self.text()
        if kind == 2:
            return r.choice(["n1-1", "n1-" + "9" * 18, "n1-" + "9" * 19, "-1", "n1-", "n1--1", "a1-١٢"])
        if kind == 3:
            return self.text(20)
        return "fz-" + str(r.randrange(10**r.randrange(1, 30)))

    # --- the text port

    def text_line(self) -> bytes:
        r = self.rng
        kind = r.randrange(9)
        if kind == 0:
            # Bare numbers: only ones that are not a valid sleep (a valid one
            # would queue a sleep of up to a day and hold a slot).
            line = r.choice(["9" * r.randrange(20, 6000), "1e999", "٣", "-5", "+5", "0x10", "1_0", "9" * 4301])
        elif kind == 1:
            line = r.choice(_VERBS) + self.job_id()
        elif kind == 2:
            line = "LIST " + self.number()
        elif kind == 3:
            line = f"WAIT {self.job_id()} {self.number()}"
        elif kind == 4:
            line = f"SUBMIT --timeout {self.number()} true"
        elif kind == 5:
            # A command that is harmless whatever the fuzz text inside the
            # quotes (a single-quoted word is literal to sh).
            line = "SUBMIT printf %s '" + self.text().replace("'", "") + "'"
        elif kind == 6:
            line = r.choice(["PEERS", "HELP", "STATS", "LIST", "AUTH", "AUTH x", "FROB", ""]) + self.text(3)
        elif kind == 7:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 64))).replace(b"\n", b" ")
        else:
            line = "x" * r.choice([70_000, 200_000])  # past line_bytes_max
        # One line: a LF inside would start another line of whatever follows,
        # e.g. a valid bare number, a sleep of hours that holds a slot.
        return line.replace("\n", " ").encode("utf-8", "surrogatepass")

    def text_payload(self, lines: int) -> bytes:
        body = b"".join(self.text_line() + self.rng.choice([b"\n", b"\r\n"]) for _ in range(lines))
        if body.startswith(b"PEERJOBS"):
            body = b" " + body  # the text door, not the peer door
        return body

    # --- the peer port

    def hello(self, peer_id: str) -> bytes:
        r = self.rng
        if r.randrange(4) == 0:  # a bad one
            return wire.HELLO_PREFIX + r.choice([
                b"1 x 1 127.0.0.1:9", b"9" * 300 + b" x 1 127.0.0.1:9", b"1 x " + b"9" * 400 + b" 127.0.0.1:9",
                b"1 x 1 127.0.0.1:99999", b"1 \xff 1 127.0.0.1:9", b"1 x\r1 127.0.0.1:9", b"1 ",
                self.text(40).encode("utf-8", "surrogatepass")]) + r.choice([b"\n", b"", b"\r\n"])
        return wire.hello_line(peer_id, 1, "127.0.0.1:9")

    def frames(self, peer_id: str) -> bytes:
        r = self.rng
        out = []
        for _ in range(r.randrange(1, 5)):
            kind = r.randrange(6)
            if kind == 0:
                out.append(bytes(r.randrange(256) for _ in range(r.randrange(1, 200))))
            elif kind == 1:
                out.append(r.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff" + b"x" * 10]))
            elif kind == 2:
                out.append(wire.frame(cbor2.dumps(self._cbor())))
            elif kind == 3:
                tags = list(wire.registered_tags())
                out.append(wire.frame(cbor2.dumps([wire.PROTOCOL_VERSION, r.choice(tags), self._cbor()])))
            else:
                payload = self._message(peer_id)
                if payload is not None:
                    out.append(wire.frame(payload))
        return b"".join(out)

    def _cbor(self, depth: int = 0):
        r = self.rng
        kind = r.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return r.randrange(-(2**70), 2**70)
        if kind == 1:
            return r.choice([float("nan"), float("inf"), -1.5, 1e308])
        if kind == 2:
            return self.text(12)
        if kind == 3:
            return bytes(r.randrange(256) for _ in range(r.randrange(8)))
        if kind == 4:
            return r.choice([None, True, False])
        if kind == 5:
            return [self._cbor(depth + 1) for _ in range(r.randrange(4))]
        if kind == 6:
            return {self.text(3): self._cbor(depth + 1) for _ in range(r.randrange(3))}
        return cbor2.CBORTag(r.randrange(1, 300), self._cbor(depth + 1))

    def _message(self, peer_id: str) -> bytes | None:
        """A well-typed message with hostile values, `peer_id` as its sender."""
        classes = list(wire.registered_tags().values())
        cls = self.rng.choice(classes)
        try:
            return wire.encode(self._value(cls, "", 0, peer_id))
        except (TypeError, ValueError, OverflowError):
            return None

    def _value(self, annotation, name: str, depth: int, peer_id: str):
        r = self.rng
        if annotation is int:
            if name == "sleep_ms":
                return r.choice([-1, 10**20, 5])  # never a long valid sleep: it would hold a slot
            return r.choice([0, 1, -1, 2**63, -(2**64), 10**5000, r.randrange(10)])
        if annotation is float:
            return r.choice([float("nan"), float("inf"), -1.0, 1e308, 0.5])
        if annotation is str:
            if name == "command":  # a fuzzed command never reaches a shell: hostile, or `true`
                return r.choice(["true", "sleep 0.3; echo a\rb", "a\nb", "x\x00y", "\x1b[2J", "x" * 20_000])
            if name in ("thief", "sender", "receiver", "executor", "auditor", "holder", "from_id", "id"):
                return peer_id if r.randrange(2) else self.text(6)
            if name in ("job_id", "job_ids", "missing"):
                return self.job_id()
            if name in ("addr", "from_addr", "target_addr"):
                return r.choice(["127.0.0.1:9", "127.0.0.1:" + "9" * 5000, self.text(10)])
            return self.text(10)
        if annotation is bytes:
            return bytes(r.randrange(256) for _ in range(r.randrange(16)))
        if annotation is bool:
            return r.random() < 0.5
        if annotation is None or annotation is type(None):
            return None
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return r.choice(list(annotation))
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if depth > 2:
                raise ValueError("too deep")
            hints = typing.get_type_hints(annotation)
            return annotation(*[self._value(hints[f.name], f.name, depth + 1, peer_id)
                                for f in dataclasses.fields(annotation)])
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Union or origin is types.UnionType:
            return self._value(r.choice(args), name, depth, peer_id)
        if origin in (tuple, list):
            items = [self._value(args[0], name, depth + 1, peer_id) for _ in range(r.randrange(3))]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            return {self.text(3): self._value(args[1], name, depth + 1, peer_id) for _ in range(r.randrange(3))}
        return None

    # --- the HTTP port

    def http_request(self, token: str | None) -> bytes:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            smuggled = r.choice(["%0A", "%0D%0A", "%0D", "%250A", "%00"])
            touch = f"SUBMIT%20touch%20{quote(self.pwned)}"
            target = f"/api/jobs/x{smuggled}{touch}" + r.choice(["", f"{smuggled}AUTH%20{token or 'x'}{smuggled}{touch}"])
        elif kind == 1:
            target = "/api/jobs/" + quote(self.job_id(), safe="")
        elif kind == 2:
            target = "/api/jobs?limit=" + quote(self.number(), safe="") + r.choice(["", "&state=" + quote(self.text())])
        elif kind == 3:
            target = "/api/jobs?" + "&".join(f"k{i}=v" for i in range(r.randrange(60)))
        elif kind == 4:
            target = r.choice(["/", "/metrics", "/healthz", "/api/cluster", "/api/history", "/api/jobs", "/nothing",
                               "/api/" + quote(self.text(), safe="")])
        else:
            target = "/api/jobs/" + quote(self.text(30), safe="/%")
        auth = r.choice([b"", b"Authorization: Bearer x\r\n", b"Authorization: \xff\r\n",
                         f"Authorization: Bearer {token}\r\n".encode() if token else b""])
        return b"GET " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Connection: close\r\n\r\n"


# ---------------------------------------------------------------------------
# Sending (each input bounded by IO_TIMEOUT_S)


async def _exchange(host: str, port: int, payload: bytes, pieces: int, rng: random.Random) -> bytes | None:
    """Send `payload` cut into `pieces`, close our side, read to EOF (bounded).
    The reply bytes, or None if the input timed out."""
    cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(pieces - 1))
    with trio.move_on_after(IO_TIMEOUT_S):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return b""  # refused: the peer is down (the health check after the batch says so)
        reply = bytearray()
        try:
            last = 0
            for cut in cuts + [len(payload)]:
                if cut > last:
                    await stream.send_all(payload[last:cut])
                last = cut
            await stream.send_eof()
            while len(reply) < 1 << 22:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                reply += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()
        return bytes(reply)
    return None


@dataclasses.dataclass
class Tally:
    inputs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    http_status: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    timeouts: int = 0
    text_lines: int = 0
    text_unanswered: int = 0
    http_5xx: int = 0
    http_submits: int = 0
    bad_commands_stored: int = 0
    auth_bypassed: int = 0
    http_unauthorized_answered: int = 0
    crashes: int = 0
    restarts: int = 0
    health_failures: list = dataclasses.field(default_factory=list)


async def _text_input(peer: PeerProc, gen: Gen, tally: Tally, token: str | None) -> None:
    lines = gen.rng.randrange(1, 8)
    payload = gen.text_payload(lines)
    # With a token, most connections authenticate first; the others must be
    # refused (`ERR auth-required`) and closed, whatever they send.
    authed = token is None or gen.rng.randrange(4) > 0
    if token is not None and authed:
        payload = f"AUTH {token}\n".encode() + payload
    # Whatever came before (a cut line, a too-long line), PEERS on a line of
    # its own must still be answered on this connection.
    reply = await _exchange(peer.host, peer.port, payload + b"\nPEERS\n", gen.rng.randrange(1, 4), gen.rng)
    tally.inputs["text"] += 1
    tally.text_lines += lines
    if reply is None:
        tally.timeouts += 1
    elif authed and not _OK_PEERS.search(reply):
        tally.text_unanswered += 1
    elif not authed and (reply.startswith(b"OK") or b"\nOK" in reply):
        # Refused means no OK at all: `ERR auth-required`, or nothing when the
        # peer's close reset the connection while we were still sending.
        tally.auth_bypassed += 1


async def _peer_input(peer: PeerProc, gen: Gen, tally: Tally, n: int) -> None:
    peer_id = f"fz{n % 50}"
    payload = gen.hello(peer_id) + (gen.frames(peer_id) if gen.rng.randrange(5) else b"")
    tally.inputs["peer"] += 1
    if await _exchange(peer.host, peer.port, payload, gen.rng.randrange(1, 4), gen.rng) is None:
        tally.timeouts += 1


async def _http_input(host: str, port: int, gen: Gen, tally: Tally, token: str | None) -> None:
    tally.inputs["http"] += 1
    request = gen.http_request(token)
    reply = await _exchange(host, port, request, 1, gen.rng)
    if reply is None:
        tally.timeouts += 1
        return
    head = reply.split(b"\r\n", 1)[0].split(b" ")
    status = int(head[1]) if len(head) > 1 and head[1].isdigit() and len(head[1]) == 3 else 0
    tally.http_status[status] += 1
    if status >= 500 or status == 0:
        tally.http_5xx += 1
    bearer = token is not None and f"Authorization: Bearer {token}\r\n".encode() in request
    if token is not None and request.startswith(b"GET /api/") and not bearer and status not in (400, 401):
        tally.http_unauthorized_answered += 1  # 400: the HTTP layer refused the request line itself


_TOKEN: str | None = None  # the client token of a --guarded run (set once by `run`)


async def _stats(peer: PeerProc) -> dict[str, int]:
    """The peer's counters, or {} if it does not answer (the health check reports that)."""
    try:
        with trio.fail_after(IO_TIMEOUT_S):
            async with AsyncClient(peer.addr, timeout_s=IO_TIMEOUT_S, token=_TOKEN) as c:
                return await c.stats()
    except (OSError, ConnectionError, trio.TooSlowError, TimeoutError, trio.BrokenResourceError):
        return {}


def _stored_commands(http_port: int) -> list[str]:
    """The commands of the latest jobs stored at a peer, read through its JSON API."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/jobs?limit=1000",
                                     headers={"Authorization": f"Bearer {_TOKEN}"} if _TOKEN else {})
    with urllib.request.urlopen(request, timeout=IO_TIMEOUT_S) as r:
        return [job["command"] for job in json.loads(r.read())["jobs"]]


async def _bad_commands(http_ports: list[int]) -> int:
    """Stored jobs whose command a peer link would refuse (a control
    character): each was acknowledged to a client and can wedge a handoff."""
    bad = 0
    for port in http_ports:
        try:
            commands = await trio.to_thread.run_sync(_stored_commands, port)
        except (OSError, ValueError, KeyError):
            continue  # the health check reports a peer that does not answer
        bad += sum(command_text_problem(c) is not None for c in commands)
    return bad


async def _handler_errors(peers: list[PeerProc]) -> int:
    """Connection failures the peers contained and logged as bugs (STATS link_handler_errors)."""
    return sum([(await _stats(p)).get("link_handler_errors", 0) for p in peers])


async def _health(peers: list[PeerProc], peer: PeerProc, tag: str) -> str | None:
    """None if `peer` lists every real peer alive and runs a job end to end;
    else what went wrong, with the peer's load and running jobs."""
    problem = await _health_check(peers, peer, tag)
    if problem is None:
        return None
    stats = await _stats(peer)
    load = " ".join(f"{k}={stats.get(k)}" for k in ("queued", "running", "slots", "lends", "outbox"))
    try:
        with trio.fail_after(IO_TIMEOUT_S):
            async with AsyncClient(peer.addr, timeout_s=IO_TIMEOUT_S, token=_TOKEN) as c:
                running = [f"{j.job_id}@{j.executor}:{j.state}" for j in await c.list(50) if not j.final][:6]
    except Exception as exc:  # noqa: BLE001 -- a diagnosis only
        running = [f"(LIST failed: {type(exc).__name__})"]
    return f"{problem} [{load}; not final: {' '.join(running)}]"


async def _health_check(peers: list[PeerProc], peer: PeerProc, tag: str) -> str | None:
    names = {p.name for p in peers}
    with trio.move_on_after(HEALTH_TIMEOUT_S):
        try:
            async with AsyncClient(peer.addr, timeout_s=IO_TIMEOUT_S, token=_TOKEN) as c:
                while True:
                    alive = {m.id for m in await c.members() if m.state == "alive"}
                    if names <= alive:
                        break
                    await trio.sleep(0.1)
                job = await c.submit(f"echo {tag}")
                status = await c.wait(job, timeout_s=HEALTH_TIMEOUT_S)
                result = await c.result(job)
                if status.state != "done" or result.stdout != f"{tag}\n".encode():
                    return f"{peer.name}: job {job} {status.state}, stdout {result.stdout[:40]!r}"
                return None
        except Exception as exc:  # noqa: BLE001 -- any failure to answer is the finding
            return f"{peer.name}: {type(exc).__name__}: {exc}"
    return f"{peer.name}: no healthy answer within {HEALTH_TIMEOUT_S:g} s"


async def _batch(peers, http_ports, rng: random.Random, tally: Tally, count: int, concurrency: int,
                 token: str | None, pwned: str) -> None:
    """`count` inputs: text, then peer, then HTTP (the HTTP phase alone, so
    that any job submitted meanwhile can only have come through HTTP). Each
    input draws from its own generator, seeded in order from `rng`, so a
    seed replays the same inputs however the tasks interleave."""
    inputs = [(rng.choice(("text", "text", "peer", "http")), rng.randrange(len(peers)),
               Gen(random.Random(rng.getrandbits(64)), pwned)) for _ in range(count)]
    limiter = trio.CapacityLimiter(concurrency)

    async def one(door: str, i: int, gen: Gen, n: int) -> None:
        async with limiter:
            if door == "text":
                await _text_input(peers[i], gen, tally, token)
            elif door == "peer":
                await _peer_input(peers[i], gen, tally, n)
            else:
                await _http_input("127.0.0.1", http_ports[i], gen, tally, token)

    for phase in ("text", "peer", "http"):
        before = [await _stats(p) for p in peers] if phase == "http" else None
        async with trio.open_nursery() as nursery:
            for n, (door, i, gen) in enumerate(inputs):
                if door == phase:
                    nursery.start_soon(one, door, i, gen, n)
        if before is not None:
            after = [await _stats(p) for p in peers]
            tally.http_submits += sum(a.get("jobs_submitted", 0) - b.get("jobs_submitted", 0)
                                      for a, b in zip(after, before) if a and b)


async def run(args) -> dict:
    global _TOKEN
    rng = random.Random(args.seed)
    tally = Tally()
    workdir = tempfile.mkdtemp(prefix="peerjobs-fuzz-")
    pwned = os.path.join(workdir, "pwned")
    ports = [free_port() for _ in range(args.peers)]
    http_ports = [free_port() for _ in range(args.peers)]
    first = f"127.0.0.1:{ports[0]}"
    guard: list[str] = []
    token = None
    if args.guarded:  # a client token and a cluster secret (a token alone refuses peer links)
        token = f"fuzz-token-{rng.getrandbits(64):016x}"
        for name, value in (("token", token), ("secret", f"fuzz-secret-{rng.getrandbits(128):032x}")):
            path = os.path.join(workdir, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(value + "\n")
            guard += [f"--{name}-file", path]
    _TOKEN = token
    peers = [PeerProc(workdir, f"p{i + 1}", port, args.slots, [] if i == 0 else [first], False,
                      extra_args=["--http", f"127.0.0.1:{http_ports[i]}", *guard])
             for i, port in enumerate(ports)]
    cluster = ProcessCluster(len(peers), args.slots, workdir, peers=peers)
    started = time.monotonic()
    handler_errors_before = 0
    ok = False
    try:
        await cluster.start()
        for p in peers:
            problem = await _health(peers, p, "fuzz-start")
            if problem is not None:
                raise RuntimeError(f"the cluster is not healthy before any input: {problem}")
        handler_errors_before = await _handler_errors(peers)
        sent, batch_no = 0, 0
        while sent < args.inputs:
            count = min(args.batch, args.inputs - sent)
            await _batch(peers, http_ports, rng, tally, count, args.concurrency, token, pwned)
            sent += count
            batch_no += 1
            for p in peers:
                if not p.running():
                    tally.crashes += 1
                    _say(f"{p.name} died (exit {p.proc.returncode}) in batch {batch_no}; see {p.log_path}; restarting")
                    p.spawn()
                    tally.restarts += 1
                    if not await p.wait_listening():
                        raise RuntimeError(f"{p.name} did not restart (see {p.log_path})")
            tally.bad_commands_stored = max(tally.bad_commands_stored, await _bad_commands(http_ports))
            for p in peers:
                problem = await _health(peers, p, f"fuzz-ok-{batch_no}")
                if problem is not None:
                    tally.health_failures.append(f"batch {batch_no}: {problem}")
            if args.progress:
                _say(f"{sent}/{args.inputs} inputs, crashes {tally.crashes}, "
                     f"health failures {len(tally.health_failures)}")
        handler_errors = await _handler_errors(peers) - handler_errors_before
        ok = True
    finally:
        cluster.close()
        smuggled = os.path.exists(pwned)
        if ok and not (tally.crashes or tally.health_failures or smuggled) and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"work dir kept: {workdir}")
    report = {
        "seed": args.seed, "peers": args.peers, "inputs": sum(tally.inputs.values()), "by_door": dict(tally.inputs),
        "text_lines": tally.text_lines,
        "crashes": tally.crashes, "restarts": tally.restarts, "handler_errors": handler_errors,
        "health_failures": tally.health_failures, "text_unanswered": tally.text_unanswered,
        "http_5xx": tally.http_5xx, "http_submits": tally.http_submits, "http_pwned_file": smuggled,
        "bad_commands_stored": tally.bad_commands_stored, "guarded": bool(token), "auth_bypassed": tally.auth_bypassed,
        "http_unauthorized_answered": tally.http_unauthorized_answered,
        "http_status": {str(k): v for k, v in sorted(tally.http_status.items())}, "timeouts": tally.timeouts,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report["ok"] = not (tally.crashes or handler_errors or tally.health_failures or tally.text_unanswered
                        or tally.http_5xx or tally.http_submits or smuggled or tally.timeouts or tally.auth_bypassed
                        or tally.http_unauthorized_answered or tally.bad_commands_stored)
    return report


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sim fuzz", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=10_000,
                    help="hostile inputs to send (one input: a text connection of 1-7 lines, a peer connection, "
                         "or an HTTP request)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--peers", type=int, default=2)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500, help="inputs between health checks")
    ap.add_argument("--concurrency", type=int, default=8, help=f"connections in flight (at most {CONCURRENCY_MAX})")
    ap.add_argument("--guarded", action="store_true",
                    help="peers with a client token and a cluster secret: unauthenticated inputs must be refused")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--progress", action="store_true", help="a line on stderr after every batch")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (peer logs) even when all went well")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.peers <= 16 or args.inputs < 0 or args.batch < 1 or not 1 <= args.concurrency <= CONCURRENCY_MAX:
        print("fuzz: need 1..16 peers, inputs >= 0, batch >= 1, concurrency 1.."
              f"{CONCURRENCY_MAX}", file=sys.stderr)
        return 2
    try:
        report = trio.run(run, args)
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"fuzz: {report['inputs']} inputs ({', '.join(f'{k} {v}' for k, v in report['by_door'].items())}; "
              f"{report['text_lines']} text lines) to {report['peers']} peers in {report['elapsed_s']} s, "
              f"seed {report['seed']}")
        print(f"  crashes {report['crashes']} (restarts {report['restarts']}), handler errors "
              f"{report['handler_errors']}, health failures {len(report['health_failures'])}, timeouts "
              f"{report['timeouts']}")
        if report["guarded"]:
            print(f"  guarded: unauthenticated text connections served {report['auth_bypassed']}, "
                  f"unauthorized API requests answered {report['http_unauthorized_answered']}")
        print(f"  stored commands a peer link would refuse {report['bad_commands_stored']}")
        print(f"  text connections unanswered {report['text_unanswered']}; HTTP 5xx {report['http_5xx']}, "
              f"jobs submitted through HTTP {report['http_submits']}; HTTP statuses {report['http_status']}")
        for line in report["health_failures"][:20]:
            print("  health:", line)
        print("  verdict:", "OK" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
