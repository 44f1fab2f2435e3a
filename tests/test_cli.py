"""`peerjobs` against real peers: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from executor.client import Client
from tests.conftest import ROOT, PeerProcess, free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    a = PeerProcess(tmp, name="a1", slots=2)
    a.start()
    b = PeerProcess(tmp, name="b1", slots=2, join=[a.addr])
    b.start()
    with Client(a.addr) as c:  # wait until a1 sees b1
        for _ in range(250):
            if len(c.peers()) == 2:
                break
            time.sleep(0.02)
    yield a, b
    b.stop()
    a.stop()


def run(*args, stdin=None, env=None, timeout=30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PEERJOBS_")}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "executor.client.cli", *args]
    proc = subprocess.run(cmd, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout, env=full_env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_error_line(proc, code=1) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peerjobs: "), proc.stderr
    return lines[0]


def test_submit_status_result_wait(cluster):
    a, _ = cluster
    job = run("submit", "--peer", a.addr, "echo", "hello").stdout.strip()
    assert job.startswith("a1-")
    waited = run("wait", "--peer", a.addr, job)
    assert waited.returncode == 0 and waited.stdout == "hello\n"
    status = json.loads(run("status", "--peer", a.addr, "--json", job).stdout)
    assert status["id"] == job and status["state"] == "done" and status["exit"] == 0
    res = json.loads(run("result", "--peer", a.addr, "--json", job).stdout)
    assert res["stdout"] == "hello\n"


def test_submit_wait_exits_with_the_jobs_code(cluster):
    a, _ = cluster
    proc = run("submit", "--peer", a.addr, "--wait", "--", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3 and proc.stdout == "out\n"
    assert proc.stderr.startswith("err\n") and "exit 3" in proc.stderr
    proc = run("submit", "--peer", a.addr, "--wait", "--timeout", "0.2", "--json", "sleep 5")
    assert proc.returncode == 124 and json.loads(proc.stdout)["reason"] == "timeout"


def test_batch_from_stdin_with_wait(cluster):
    a, _ = cluster
    lines = "".join(f"echo job {i}\n" for i in range(30)) + "# a comment\n\nexit 9\n"
    proc = run("submit", "--peer", a.addr, "--file", "-", "--wait", "--json", stdin=lines)
    rows = json.loads(proc.stdout)
    assert proc.returncode == 1  # one job failed
    assert len(rows) == 31 and sum(r["state"] == "done" for r in rows) == 30
    assert rows[-1]["exit"] == 9 and rows[-1]["command"] == "exit 9"
    proc = run("submit", "--peer", a.addr, "--file", "-", "--wait", stdin="true\ntrue\n")
    assert proc.returncode == 0 and "2 jobs: 2 done" in proc.stdout
    assert "2/2" in proc.stderr  # the progress bar's last frame
    ids = run("submit", "--peer", a.addr, "-f", "-", stdin="true\ntrue\n").stdout.split()
    assert len(ids) == 2 and all(i.startswith("a1-") for i in ids)


def test_cancel_and_wait_timeout(cluster):
    a, _ = cluster
    job = run("submit", "--peer", a.addr, "sleep 30").stdout.strip()
    line = one_error_line(run("wait", "--peer", a.addr, "--timeout", "0.2", job))
    assert line == f"peerjobs: job {job} did not finish within 0.2 s"
    line = one_error_line(run("result", "--peer", a.addr, job))
    assert "has not finished yet" in line
    assert json.loads(run("cancel", "--peer", a.addr, "--json", job).stdout) == {"id": job, "state": "cancelled"}
    assert run("wait", "--peer", a.addr, job).returncode == 1


def test_job_asked_at_another_peer_is_followed_home(cluster):
    a, b = cluster
    job = run("submit", "--peer", a.addr, "--", "echo from a").stdout.strip()
    proc = run("wait", "--peer", b.addr, job)
    assert proc.returncode == 0 and proc.stdout == "from a\n"


def test_errors_are_one_line(cluster):
    a, _ = cluster
    assert "not a job id" in one_error_line(run("status", "--peer", a.addr, "../etc"))
    assert "no job a1-999999" in one_error_line(run("status", "--peer", a.addr, "a1-999999"))
    # not-home with no known address (`home=-`): the error stands, its prose shown without the field.
    assert one_error_line(run("cancel", "--peer", a.addr, "zz-1")) == "peerjobs: job zz-1 belongs to peer zz; ask it there"
    dead = f"127.0.0.1:{free_port()}"
    for args in (["peers"], ["submit", "true"], ["top", "--once"], ["status", "a1-1"]):
        line = one_error_line(run(args[0], "--peer", dead, *args[1:]))
        assert line.startswith(f"peerjobs: cannot reach peer {dead}: connection refused"), line
    assert "not HOST:PORT" in one_error_line(run("peers", "--peer", "nonsense"))
    assert "No such command" in one_error_line(run("frob"), code=2)
    assert "missing the command" in one_error_line(run("submit", "--peer", a.addr), code=2)
    assert "No such file" in one_error_line(run("submit", "--peer", a.addr, "-f", "/nonexistent"))


def test_peers_top_jobs_stats(cluster):
    a, b = cluster
    env = {"PEERJOBS_ADDR": b.addr}  # the environment names the peer
    members = json.loads(run("peers", "--json", env=env).stdout)
    assert {m["id"] for m in members} == {"a1", "b1"}
    assert next(m for m in members if m["self"])["id"] == "b1"
    text = run("peers", "--peer", a.addr).stdout
    assert "a1" in text and "b1" in text and "alive" in text and "2/2 alive" in text
    frame = run("top", "--peer", a.addr, "--once", "--interval", "0.1")
    assert frame.returncode == 0
    assert "peerjobs top" in frame.stdout and "jobs/s" in frame.stdout and "2/2 alive" in frame.stdout
    snap = json.loads(run("top", "--peer", a.addr, "--json", "--interval", "0.1").stdout)
    assert {p["id"] for p in snap["peers"]} == {"a1", "b1"}
    assert all(p["stats"]["slots"] == 2 for p in snap["peers"])
    listed = json.loads(run("jobs", "--peer", a.addr, "--json", "-n", "5").stdout)
    assert 1 <= len(listed) <= 5 and all(j["id"].startswith("a1-") for j in listed)
    assert json.loads(run("stats", "--peer", a.addr, "--json").stdout)["slots"] == 2


def test_print_config_precedence(tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text('[node]\nslots = 3\nname = "fromfile"\nlisten = "127.0.0.1:7555"\n'
                    '[config]\nwait_max_s = 60\nlist_max = 7\n[config.gossip]\nprobe_interval_s = 0.5\n')
    env = {"PEERJOBS_CONFIG": str(conf), "PEERJOBS_SLOTS": "5", "PEERJOBS_LIST_MAX": "9"}
    proc = run("node", "--print-config", "--json", "--slots", "7", env=env)
    got = json.loads(proc.stdout)
    node, config = got["node"], got["config"]
    assert node["slots"] == {"value": 7, "source": "flag --slots"}
    assert node["name"] == {"value": "fromfile", "source": f"file {conf}"}
    assert node["data"] == {"value": "./peerjobs-data", "source": "default"}
    assert config["list_max"] == {"value": 9, "source": "env PEERJOBS_LIST_MAX"}
    assert config["wait_max_s"] == {"value": 60.0, "source": f"file {conf}"}
    assert config["gossip.probe_interval_s"]["value"] == 0.5
    text = run("node", "--print-config", env=env).stdout
    assert 'slots = 5                  # env PEERJOBS_SLOTS' in text and "[config.gossip]" in text
    conf.write_text("[node]\nslots = 'many'\n")
    assert "slots" in one_error_line(run("node", "--print-config", env={"PEERJOBS_CONFIG": str(conf)}))
