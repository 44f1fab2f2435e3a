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
