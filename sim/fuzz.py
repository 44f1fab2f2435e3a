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
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request

import trio

from executor.client import AsyncClient
from executor.core.protocol import command_text_problem
from sim.bench import free_port
from sim.cluster import PeerProc, ProcessCluster
from sim.fuzz_inputs import IO_TIMEOUT_S, Gen, Tally, _exchange

HEALTH_TIMEOUT_S = 20.0
"""Longest the health check of one peer may take after a batch (membership
converging, a job run end to end)."""

CONCURRENCY_MAX = 64
"""Largest --concurrency: connections in flight at once from the fuzzer."""

_OK_PEERS = re.compile(rb"OK [0-9]+ peers?\n")


def _say(*parts) -> None:
    print("fuzz:", *parts, file=sys.stderr, flush=True)


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


async def _fuzz_batches(args, peers, http_ports, rng: random.Random, tally: Tally, token: str | None,
                         pwned: str) -> None:
    """Send the inputs in batches; after each: restart what died (counted),
    look for stored commands a link would refuse, check every peer's health."""
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
        await _fuzz_batches(args, peers, http_ports, rng, tally, token, pwned)
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
