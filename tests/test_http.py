"""The HTTP side of a peer: /metrics (Prometheus), the JSON API, the page."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from executor.client import Client
from executor.config import Config
from executor.edge.node import Node
from tests.conftest import PeerProcess, free_port


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def wait_http(base: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            if get(base + "/healthz")[0] == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    port = free_port()
    p = PeerProcess(tmp_path_factory.mktemp("http"), name="w1", slots=2, extra=["--http", f"127.0.0.1:{port}"])
    p.start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base)
    yield p, base
    p.stop()


def scrape(base: str) -> dict[str, float]:
    status, ctype, text = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_metrics_parse_and_move_when_jobs_run(web):
    p, base = web
    before = scrape(base)
    for name in ("peerjobs_jobs_submitted_total", "peerjobs_jobs_finished_total", "peerjobs_jobs_failed_total",
                 "peerjobs_jobs_cancelled_total", "peerjobs_queue_length", "peerjobs_running_jobs",
                 "peerjobs_steals_total{direction=in}", "peerjobs_steals_total{direction=out}",
                 "peerjobs_handoffs_pending", "peerjobs_jobs_reexecuted_total", "peerjobs_client_connections",
                 "peerjobs_members{state=alive}", "peerjobs_membership_changes_total{event=declared_dead}",
                 "peerjobs_commit_batch_writes_count", "peerjobs_commit_seconds_count"):
        assert name in before, name
    with Client(p.addr) as c:
        ids = c.submit_commands(["true"] * 5 + ["exit 1"])
        for j in ids:
            c.wait(j, timeout_s=10)
        slow = c.submit("sleep 30")
        c.cancel(slow)
        after = scrape(base)
        assert after["peerjobs_client_connections"] >= 1
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["peerjobs_jobs_submitted_total"] == 7
    assert delta["peerjobs_jobs_finished_total"] == 5
    assert delta["peerjobs_jobs_failed_total"] == 1
    assert delta["peerjobs_jobs_cancelled_total"] == 1
    assert delta["peerjobs_commit_batch_writes_count"] >= 1 and delta["peerjobs_commit_seconds_sum"] > 0
    # Group commits are synced batches, one histogram observation each (not the core's write sets).
    assert delta["peerjobs_commit_batches_total"] == delta["peerjobs_commit_seconds_count"] >= 1
    assert after["peerjobs_members{state=alive}"] == 1


def test_json_api_and_page(web):
    p, base = web
    with Client(p.addr) as c:
        ok = c.submit("echo api-ok")
        bad = c.submit("echo nope >&2; exit 2")
        c.wait(ok), c.wait(bad)
    status, ctype, body = get(base + "/api/cluster")
    cluster = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert cluster["peer"] == "w1" and cluster["peers"][0]["self"] and cluster["balance"]["alive"] == 1
    jobs = json.loads(get(base + "/api/jobs?state=failed&limit=5")[2])
    assert all(j["state"] == "failed" for j in jobs["jobs"]) and jobs["jobs"][0]["id"] == bad
    found = json.loads(get(base + "/api/jobs?q=api-ok")[2])["jobs"]
    assert [j["id"] for j in found] == [ok] and found[0]["command"] == "echo api-ok"
    detail = json.loads(get(base + f"/api/jobs/{ok}")[2])
    assert detail["stdout"] == "api-ok\n" and detail["state"] == "done" and detail["command"] == "echo api-ok"
    assert json.loads(get(base + f"/api/jobs/{bad}")[2])["stderr"] == "nope\n"
    status, _, body = get(base + "/api/jobs/w1-999999")
    assert status == 404 and json.loads(body)["error"] == "not-found"
    status, _, body = get(base + "/api/jobs/zz-1")  # another peer's job: its address is a member, not prose
    assert status == 404 and json.loads(body) == {
        "error": "not-home", "message": "job zz-1 belongs to peer zz; ask it there", "home": "-"}
    assert get(base + "/nothing")[0] == 404
    assert get(base + "/api/jobs?limit=x")[0] == 400
    status, ctype, page = get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and "peerjobs" in page
    history = json.loads(get(base + "/api/history")[2])
    assert history["samples"] and "w1" in history["samples"][-1]["peers"]


async def test_http_hook_in_process(tmp_path):
    """Node(http=...) serves inside the peer's own nursery; port 0 is reported."""
    node = Node(data_dir=str(tmp_path / "d"), listen=("127.0.0.1", 0), slots=1, name="h1",
                config=Config.local(), http=("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.http_port
        status, _, body = await trio.to_thread.run_sync(get, f"http://127.0.0.1:{node.http_port}/api/cluster")
        assert status == 200 and json.loads(body)["peer"] == "h1"
        nursery.cancel_scope.cancel()


def test_http_port_in_use_is_one_clear_line(tmp_path, web):
    import subprocess
    import sys

    from tests.conftest import ROOT

    _, base = web
    busy = base.rpartition(":")[2]
    proc = subprocess.run([sys.executable, "-m", "executor.client.cli", "node", "--data", str(tmp_path / "d"),
                           "--listen", "127.0.0.1:0", "--http", f"127.0.0.1:{busy}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"peerjobs: cannot serve HTTP on 127.0.0.1:{busy}: Address already in use"


# ---------------------------------------------------------------------------
# Issue 11, case 3: no string from an HTTP request reaches the line protocol,
# and with a client token the JSON API needs it.

TOKEN = "http-token-0123456789abcdef"


def get_with(url: str, token: str | None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    p = PeerProcess(tmp, name="g1", slots=2, extra=["--http", f"127.0.0.1:{port}", "--token-file", str(token_file)])
    p.start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base)
    yield p, base, tmp
    p.stop()


def test_http_job_path_with_newlines_runs_nothing_even_with_the_token(guarded):
    p, base, tmp = guarded
    target = tmp / "pwned"
    touch = f"touch%20{target}"
    paths = [f"/api/jobs/x%0ASUBMIT%20{touch}", f"/api/jobs/x%0D%0ASUBMIT%20{touch}",
             f"/api/jobs/x%0AAUTH%20{TOKEN}%0ASUBMIT%20{touch}", f"/api/jobs/g1-1%0ASUBMIT%20{touch}",
             f"/api/jobs/x%250ASUBMIT%20{touch}", f"/api/jobs/g1-{'9' * 5000}"]
    for path in paths:
        status, _, body = get_with(base + path, TOKEN)
        assert status == 400 and json.loads(body)["error"] == "bad-id", path[:60]
        assert get_with(base + path, None)[0] == 401
    with Client(p.addr, token=TOKEN) as c:
        # A job after the attack: by the time it is done, anything smuggled
        # before it would have been submitted too.
        job = c.submit("echo after")
        c.wait(job, timeout_s=10)
        assert c.stats()["jobs_submitted"] == 1
    assert not target.exists()
    status, _, body = get_with(base + f"/api/jobs/{job}", TOKEN)
    assert status == 200 and json.loads(body)["stdout"] == "after\n"


def test_http_api_needs_the_bearer_token_when_the_peer_has_one(guarded):
    _, base, _ = guarded
    for path in ("/api/cluster", "/api/history", "/api/jobs", "/api/jobs/g1-1"):
        status, ctype, body = get_with(base + path, None)
        assert status == 401 and ctype == "application/json" and json.loads(body)["error"] == "auth-required", path
        assert get_with(base + path, TOKEN[:-1] + "x")[0] == 401
    status, _, body = get_with(base + "/api/cluster", TOKEN)
    assert status == 200 and json.loads(body)["peer"] == "g1"
    # What stays open: the page (it holds no data), health, and counts only.
    assert get_with(base + "/", None)[0] == 200
    assert get_with(base + "/healthz", None)[0] == 200
    status, _, text = get_with(base + "/metrics", None)
    assert status == 200 and "peerjobs_jobs_submitted_total" in text


def test_http_query_numbers_are_bounded(web):
    _, base = web
    for query in ("limit=" + "9" * 5000, "limit=0", "limit=-1", "limit=1e3", "limit=%D9%A3", "limit=1001"):
        status, _, body = get(base + "/api/jobs?" + query)
        assert status == 400 and json.loads(body)["error"] == "bad-request", query[:30]
    assert get(base + "/api/jobs?limit=1000")[0] == 200
    assert get(base + "/api/jobs?" + "&".join(f"k{i}=v" for i in range(40)))[0] == 400
    assert get(base + "/api/jobs?q=%FF%FE")[0] == 200
    assert get(base + "/api/jobs?q=" + "x" * 257)[0] == 400
    status, _, body = get(base + "/api/jobs/w1-" + "9" * 5000)
    assert status == 400 and json.loads(body)["error"] == "bad-id"


async def test_node_ask_answers_typed_commands_as_a_client_is_answered(tmp_path):
    from executor.core import protocol

    node = Node(data_dir=str(tmp_path / "d"), listen=("127.0.0.1", 0), slots=1, name="k1", config=Config.local())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert await node.ask(protocol.Submit(protocol.JobSpec("sleep", sleep_ms=1))) == b"OK k1-1\n"
        assert (await node.ask(protocol.Wait("k1-1", 10.0))).startswith(b"OK k1-1 done ")
        assert (await node.ask(protocol.Result("k1-1"))).startswith(b"OK k1-1 done exit=0 stdout=0 stderr=0")
        assert (await node.ask(protocol.Status("k1-9"))).startswith(b"ERR not-found ")
        assert await node.ask(protocol.Status("other-1")) == (
            b"ERR not-home home=- job other-1 belongs to peer other; ask it there\n")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Issue 15, views: cluster-wide jobs, asked of every member through its
# client port, with the cluster's client token forwarded (secret + token).

CLUSTER_TOKEN = "cluster-token-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three peers, one dashboard (c1): c2 and c3 serve no HTTP at all."""
    tmp = tmp_path_factory.mktemp("cluster")
    for name, value in (("secret", "cluster-secret-0123456789abcdef"), ("token", CLUSTER_TOKEN)):
        (tmp / name).write_text(value + "\n")
        (tmp / name).chmod(0o600)
    trust = ["--secret-file", str(tmp / "secret"), "--token-file", str(tmp / "token")]
    port = free_port()
    c1 = PeerProcess(tmp, name="c1", slots=2, extra=["--http", f"127.0.0.1:{port}", *trust])
    c1.start()
    c2 = PeerProcess(tmp, name="c2", slots=2, join=[c1.addr], extra=trust)
    c3 = PeerProcess(tmp, name="c3", slots=2, join=[c1.addr], extra=trust)
    started = [c1]
    try:
        for p in (c2, c3):
            p.start()
            started.append(p)
        base = f"http://127.0.0.1:{port}"
        wait_http(base)
        with Client(c1.addr, token=CLUSTER_TOKEN) as c:
            deadline = time.monotonic() + 15
            while sum(p.state == "alive" for p in c.members()) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        yield base, c1, c2, c3
    finally:
        for p in reversed(started):
            p.stop()


def api(url: str) -> tuple[int, dict]:
    status, ctype, body = get_with(url, CLUSTER_TOKEN)
    assert ctype == "application/json", (status, body[:200])
    return status, json.loads(body)


def test_cluster_jobs_of_every_home_filtered_by_state_array_and_peer(cluster):
    base, c1, c2, c3 = cluster
    with Client(c1.addr, token=CLUSTER_TOKEN) as a, Client(c2.addr, token=CLUSTER_TOKEN) as b, \
            Client(c3.addr, token=CLUSTER_TOKEN) as c:
        mine = a.submit("echo from-c1")
        theirs = b.submit("echo from-c2")
        broken = b.submit("echo boom >&2; exit 3")
        third = c.submit("echo from-c3")
        array = b.request("SUBMIT --array 1-3 -- echo element $PEERJOBS_ARRAY_INDEX")
        wide = b.request("SUBMIT --slots 2 -- echo wide")
        for client, job in ((a, mine), (b, theirs), (b, broken), (c, third), (b, array), (b, wide)):
            client.wait(job, timeout_s=20)

    status, every = api(base + "/api/cluster/jobs?limit=100")
    assert status == 200
    assert {p["peer"]: p["answered"] for p in every["peers"]} == {"c1": True, "c2": True, "c3": True}
    rows = {r["id"]: r for r in every["jobs"]}
    assert {mine, theirs, broken, third} <= set(rows)
    assert rows[mine]["home"] == "c1" and rows[mine]["command"] == "echo from-c1"  # this home's own record
    assert rows[theirs]["home"] == "c2" and rows[theirs]["state"] == "done"
    assert rows[theirs]["command"] == "echo from-c2" and rows[theirs]["slots"] == 1  # from c2's LIST line
    assert rows[wide]["slots"] == 2 and rows[third]["home"] == "c3"
    assert rows[broken]["state"] == "failed" and rows[broken]["exit"] == 3
    stamps = [r["submitted"] for r in every["jobs"]]
    assert stamps == sorted(stamps, reverse=True)

    _, failed = api(base + "/api/cluster/jobs?state=failed")
    assert broken in {r["id"] for r in failed["jobs"]} and {r["state"] for r in failed["jobs"]} == {"failed"}

    _, only_c2 = api(base + "/api/cluster/jobs?peer=c2&limit=100")
    assert [p["peer"] for p in only_c2["peers"]] == ["c2"]
    assert {r["home"] for r in only_c2["jobs"]} == {"c2"} and theirs in {r["id"] for r in only_c2["jobs"]}

    _, elements = api(base + f"/api/cluster/jobs?array={array}")
    assert sorted(r["id"] for r in elements["jobs"]) == [f"{array}.{i}" for i in (1, 2, 3)]
    assert {r["parent"] for r in elements["jobs"]} == {array} and [p["peer"] for p in elements["peers"]] == ["c2"]
    assert elements["array"]["state"] == "done" and elements["array"]["fields"]["elements"] == "3"
    status, parent = api(base + f"/api/cluster/jobs/{array}")  # the array's own page: its counts
    assert status == 200 and parent["kind"] == "array" and parent["fields"]["done"] == "3"

    # /api/jobs (this home only) filters by array too, and its rows carry the new fields.
    with Client(c1.addr, token=CLUSTER_TOKEN) as a:
        local_array = a.request("SUBMIT --array 4-5 --priority 7 --retries 2 -- true")
        a.wait(local_array, timeout_s=20)
    _, local = api(base + f"/api/jobs?array={local_array}")
    assert sorted(r["id"] for r in local["jobs"]) == [f"{local_array}.4", f"{local_array}.5"]
    assert all(r["priority"] == 7 and r["try"] == [1, 3] and r["slots"] == 1 for r in local["jobs"])


def test_cluster_job_detail_dependencies_environment_and_live_output(cluster):
    base, c1, c2, _ = cluster
    with Client(c1.addr, token=CLUSTER_TOKEN) as a, Client(c2.addr, token=CLUSTER_TOKEN) as b:
        slow = b.submit("echo live-start; sleep 30")
        first = b.submit("echo first")
        b.wait(first, timeout_s=20)
        after = a.request(f"SUBMIT --after {first} --env SECRET_TOKEN=hunter2 --cwd /tmp -- echo after")
        a.wait(after, timeout_s=20)
        blocked = b.request(f"SUBMIT --after {slow} -- echo never")
        try:
            # A job of this home: its record's fields, a dependency's state from another home.
            status, detail = api(base + f"/api/cluster/jobs/{after}")
            assert status == 200 and detail["stdout"] == "after\n" and detail["output"] == "final"
            assert detail["env"] == ["SECRET_TOKEN"] and detail["cwd"] == "/tmp"
            assert detail["dependencies"] == [{"id": first, "type": "afterok", "state": "done"}]
            assert "hunter2" not in json.dumps(detail)
            # /api/jobs/<id> answers the same for this home's job.
            assert api(base + f"/api/jobs/{after}")[1]["env"] == ["SECRET_TOKEN"]
            row = next(r for r in api(base + "/api/jobs?q=echo%20after")[1]["jobs"] if r["id"] == after)
            assert row["after"] == [first] and row["after_any"] == [] and row["home"] == "c1"

            # Another home's job, through that home's client port.
            status, other = api(base + f"/api/cluster/jobs/{first}")
            assert status == 200 and other["home"] == "c2" and other["stdout"] == "first\n"

            # Waiting at c2 for a job that runs: what it waits for, and that job's state.
            deadline = time.monotonic() + 20
            while True:
                _, waiting = api(base + f"/api/cluster/jobs/{blocked}")
                _, running = api(base + f"/api/cluster/jobs/{slow}")
                if "live-start" in running.get("stdout", "") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert waiting["state"] == "waiting" and waiting["waiting_for"] == [slow]
            assert waiting["dependencies"] == [{"id": slow, "type": None, "state": "running"}]
            assert running["state"] == "running" and running["output"] == "live"
            assert running["stdout"] == "live-start\n", running
        finally:
            b.cancel(slow)


def test_cluster_job_queries_are_checked(cluster):
    base = cluster[0]
    for query, code in (("state=bogus", "bad-request"), ("array=x", "bad-id"), ("array=c1-1.2", "bad-id"),
                        ("peer=nobody", "bad-request"), ("limit=0", "bad-request"), ("limit=" + "9" * 500, "bad-request")):
        status, body = api(base + "/api/cluster/jobs?" + query)
        assert status == 400 and body["error"] == code, query
    for path in ("x%0ASTATUS%20c1-1", "c1-1%0D%0ASUBMIT%20true", "c2-" + "9" * 5000):
        status, body = api(base + "/api/cluster/jobs/" + path)
        assert status == 400 and body["error"] == "bad-id", path[:40]
    status, body = api(base + "/api/cluster/jobs/zz-1")  # a home that is no member
    assert status == 404 and body["error"] == "not-found" and body["home"] == "zz"
    assert get_with(base + "/api/cluster/jobs", None)[0] == 401


def test_a_member_that_is_down_is_listed_and_the_page_is_served(cluster):
    """Runs last in this module: it kills c3."""
    base, _, c2, c3 = cluster
    with Client(c3.addr, token=CLUSTER_TOKEN) as c:
        gone = c.submit("true")
        c.wait(gone, timeout_s=20)
    with Client(c2.addr, token=CLUSTER_TOKEN) as b:
        kept = b.submit("true")
        b.wait(kept, timeout_s=20)
    c3.kill()
    status, every = api(base + "/api/cluster/jobs?limit=200")
    assert status == 200
    members = {p["peer"]: p for p in every["peers"]}
    assert members["c1"]["answered"] and members["c2"]["answered"]
    assert not members["c3"]["answered"] and members["c3"]["error"] in ("unreachable", "dead"), members["c3"]
    assert kept in {r["id"] for r in every["jobs"]} and gone not in {r["id"] for r in every["jobs"]}
    status, body = api(base + f"/api/cluster/jobs/{gone}")
    assert status == 502 and body["error"] in ("unreachable", "dead") and body["home"] == "c3"


async def test_the_fanout_is_bounded_in_members_time_and_bytes_and_lists_who_did_not_answer():
    """In process, without peers: a member that accepts and never answers is
    listed as `timeout` once `http_fanout_timeout_s` is up, one whose port is
    closed as `unreachable`, one that floods as `reply-too-large`, a dead one
    is not asked, and members beyond `http_fanout_members_max` are listed as
    not asked; this peer's own jobs are served all the same."""
    import functools
    import socket
    from types import SimpleNamespace

    from executor.config import Security
    from executor.edge.http_jobs import cluster_jobs
    from gossip.actions import Member
    from gossip.messages import MemberState

    async def flood(stream):
        await stream.receive_some(1024)
        await stream.send_all(b"OK 100000 jobs\n" + b"x" * 5000)
        await trio.sleep_forever()  # cancelled with the nursery

    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    addr = lambda sock: f"127.0.0.1:{sock.getsockname()[1]}"
    asked_here = []

    async def ask(command):
        asked_here.append(command)
        return b"OK 1 jobs\nme-1 done attempt=1 executor=me exit=0 submitted=5.000\n"

    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, flood, 0, host="127.0.0.1"))
            members = [Member("m0", addr(listeners[0].socket), 1, MemberState.ALIVE, None, 0.0),
                       Member("m1", addr(silent), 1, MemberState.ALIVE, None, 0.0),
                       Member("m2", addr(closed), 1, MemberState.SUSPECT, None, 0.0),
                       Member("m3", "127.0.0.1:9", 1, MemberState.DEAD, None, 0.0),
                       Member("m4", "127.0.0.1:9", 1, MemberState.ALIVE, None, 0.0)]
            core = SimpleNamespace(members=lambda: members, member={m.id: m for m in members}.get,
                                   job=lambda job_id: None)
            config = Config.local(http_fanout_timeout_s=0.5, http_fanout_members_max=3, http_fanout_reply_bytes_max=4096)
            node = SimpleNamespace(peer_id="me", addr="127.0.0.1:1", core=core, ask=ask, security=Security(),
                                   config=config)
            out = await cluster_jobs(node, state=None, array=None, peer=None, limit=10)
            nursery.cancel_scope.cancel()
    finally:
        silent.close()
        closed.close()
    by_peer = {p["peer"]: (p["answered"], p["error"]) for p in out["peers"]}
    assert by_peer == {"me": (True, None), "m0": (False, "reply-too-large"), "m1": (False, "timeout"),
                       "m2": (False, "unreachable"), "m3": (False, "dead"), "m4": (False, "not-asked")}
    assert [r["id"] for r in out["jobs"]] == ["me-1"] and asked_here[0].count == 10
