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


def test_several_words_keep_their_meaning_one_word_is_a_shell_string(cluster):
    """`submit -- sh -c 'echo out; exit 3'` runs sh with those two arguments
    (the words quoted with shlex.join), not `sh -c echo out; exit 3` (the
    words joined with spaces, as ssh does); one word runs as a shell string."""
    a, _ = cluster
    proc = run("submit", "--peer", a.addr, "--wait", "--", "sh", "-c", "echo out; exit 3")
    assert (proc.returncode, proc.stdout) == (3, "out\n"), proc
    proc = run("submit", "--peer", a.addr, "--wait", "--", "printf", "%s|", "a  b", "$HOME", "c'd")
    assert (proc.returncode, proc.stdout) == (0, "a  b|$HOME|c'd|")
    proc = run("submit", "--peer", a.addr, "--wait", "echo $((2 + 3)) | tr 5 V")
    assert (proc.returncode, proc.stdout) == (0, "V\n")
    text = " ".join(run("submit", "--help").stdout.split())
    assert "ONE word after the options is a shell string" in text and "SEVERAL words keep their meaning" in text


def test_submit_options(cluster, tmp_path):
    a, _ = cluster
    proc = run("submit", "--peer", a.addr, "--wait", "--json", "--retries", "2", "--backoff", "0.01",
               "--priority", "4", "--env", "N=v", "--env", "M=w", "--cwd", str(tmp_path), "--keep", "600",
               "--", "sh", "-c", 'echo "$N$M"; pwd; exit 1')
    assert proc.returncode == 1 and json.loads(proc.stdout)["stdout"] == f"vw\n{tmp_path}\n"
    job = json.loads(proc.stdout)["id"]
    status = json.loads(run("status", "--peer", a.addr, "--json", job).stdout)
    assert (status["state"], status["try"], status["priority"]) == ("failed", [3, 3], 4)

    later = run("submit", "--peer", a.addr, "--delay", "600", "echo later").stdout.strip()
    blocker = run("submit", "--peer", a.addr, "sleep 30").stdout.strip()
    dependent = run("submit", "--peer", a.addr, "--after", blocker, "--", "echo", "dep").stdout.strip()
    rows = run("jobs", "--peer", a.addr, "--parsable", "--state", "waiting").stdout.splitlines()
    assert rows[0] == "id|state|try|priority|executor|exit|reason|submitted|due|after|command"
    fields = dict(zip(rows[0].split("|"), rows[1].split("|")))
    assert (fields["id"], fields["state"], fields["after"]) == (dependent, "waiting", blocker)
    scheduled = json.loads(run("jobs", "--peer", a.addr, "--json", "--state", "scheduled").stdout)
    assert [j["id"] for j in scheduled] == [later] and scheduled[0]["due"] > scheduled[0]["submitted"] + 500
    # The text views of the new states (each once crashed on a state without a colour).
    assert "scheduled  attempt=1  due=" in run("status", "--peer", a.addr, later).stdout
    assert f"waiting  attempt=1  after={blocker}" in run("status", "--peer", a.addr, dependent).stdout
    table = run("jobs", "--peer", a.addr, "-n", "3").stdout
    assert f"after {blocker}" in table and "due in" in table
    run("cancel", "--peer", a.addr, blocker, later)
    assert json.loads(run("status", "--peer", a.addr, "--json", dependent).stdout)["reason"] == "dependency-failed"


def test_values_with_spaces_and_arrays(cluster, tmp_path):
    a, _ = cluster
    (tmp_path / "a dir").mkdir()
    proc = run("submit", "--peer", a.addr, "--wait", "--env", "GREETING=hello  world", "--cwd", str(tmp_path / "a dir"),
               "--", "sh", "-c", 'echo "$GREETING from $(pwd)"')
    assert (proc.returncode, proc.stdout) == (0, f"hello  world from {tmp_path}/a dir\n")
    proc = run("submit", "--peer", a.addr, "--wait", "--json", "--array", "1-3%2", "echo $PEERJOBS_ARRAY_INDEX")
    whole = json.loads(proc.stdout)
    assert proc.returncode == 0 and (whole["state"], whole["elements"], whole["done"]) == ("done", 3, 3)
    rows = run("jobs", "--peer", a.addr, "--parsable", "--array", whole["id"]).stdout.splitlines()
    assert [r.split("|")[0] for r in rows[1:]] == [f"{whole['id']}.{i}" for i in (3, 2, 1)]
    assert run("result", "--peer", a.addr, f"{whole['id']}.2").stdout == "2\n"
    assert f"{whole['id']}  done  array=1-3%2  elements=3" in run("status", "--peer", a.addr, whole["id"]).stdout


def test_bad_submit_options_are_usage_errors_and_send_nothing(cluster):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: a usage error must come before any connection
    for args, words in ((["--env", "A=a' b\" c"], "cannot be sent"), (["--env", "NOEQUALS"], "NAME=VALUE"),
                        (["--retries", "-1"], "--retries must be from 0"), (["--backoff", "1"], "needs --retries"),
                        (["--priority", "100000"], "--priority must be from"), (["--array", "5-1"], "below the first"),
                        (["--delay", "1", "--at", "2"], "--delay or --at"), (["--after", "x/1"], "not a job id"),
                        (["--cron", "often"], "--cron 'often'"), (["--every", "5", "--wait"], "never finishes")):
        line = one_error_line(run("submit", "--peer", dead, *args, "true"), code=2)
        assert words in line and "cannot reach" not in line, line


def test_jobs_state_filter_is_the_peers(cluster):
    """`jobs -n 1 --state done` is the latest done job even when the latest
    job failed: the peer filters, then counts (filtering the latest 1 job on
    the client would show nothing)."""
    a, _ = cluster
    done = run("submit", "--peer", a.addr, "--wait", "true")
    assert done.returncode == 0
    failed = run("submit", "--peer", a.addr, "--json", "--wait", "exit 7")
    assert failed.returncode == 7
    latest_done = json.loads(run("jobs", "--peer", a.addr, "--json", "-n", "1", "--state", "done").stdout)
    assert len(latest_done) == 1 and latest_done[0]["state"] == "done"
    latest = json.loads(run("jobs", "--peer", a.addr, "--json", "-n", "1").stdout)
    assert latest[0]["id"] == json.loads(failed.stdout)["id"] and latest[0]["state"] == "failed"
    text = run("jobs", "--peer", a.addr, "-n", "3").stdout
    assert text.split()[:7] == ["job", "state", "try", "prio", "executor", "age", "reason"]


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
    # A bound that would hold every client request for ever: refused in one line, as a bad value is.
    assert "inbox_client_requests_max must be at least 1" in one_error_line(
        run("node", "--print-config", env={"PEERJOBS_INBOX_CLIENT_REQUESTS_MAX": "0"}))
