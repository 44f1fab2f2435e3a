"""`peerjobs tail [-f] JOB_ID`: a job's output so far, or as it is written.

Asks any peer: `not-home` leads to the job's home, `elsewhere` to the peer
that runs it (executor/client/tail.py). stdout bytes go to stdout, stderr
bytes to stderr, as the job wrote them. Without -f: the output so far, exit
0 while the job runs (its exit code once it is final). With -f: waits for a
queued job to start (`--start-timeout`), streams every run until the job is
final, and exits with its exit code (as `peerjobs wait`).
"""

from __future__ import annotations

import json
import math
import sys

import click

from executor.client.cli_common import (
    CliError,
    _client_kw,
    _print_json,
    cli,
    client_command,
    job_exit_code,
)
from executor.client.replies import FINAL_STATES, JobStatus
from executor.client.tail import TAIL_START_WAIT_S, follow_job, tail_at


def _write(out: bytes, err: bytes) -> None:
    if out:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    if err:
        sys.stderr.buffer.write(err)
        sys.stderr.flush()


def _json_line(out: bytes, err: bytes) -> None:
    click.echo(json.dumps({"stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")}))


def _ended(status: JobStatus) -> int:
    if status.state != "done":
        why = status.reason or status.state
        code = f" (exit {status.exit_code})" if status.exit_code is not None else ""
        click.echo(f"peerjobs: job {status.job_id} {status.state}: {why}{code}", err=True)
    return job_exit_code(status)


@cli.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True,
              help="stream the output as the job writes it, until the job ends; exit with its exit code")
@click.option("--start-timeout", type=float, default=TAIL_START_WAIT_S, show_default=True, metavar="SECONDS",
              help="with -f: how long to wait for a job that does not run (yet) before giving up")
@client_command
def tail(job_id, follow, start_timeout, addr, as_json) -> int:
    """Print a job's output so far; with -f, follow it to the end.

    Ask any peer: it points to the job's home, which points to the peer
    that runs it. With --json: one JSON object (without -f), or one line of
    JSON per piece of output and a last line with the job's status (-f).
    """
    if not (0 < start_timeout < math.inf):
        raise click.UsageError("--start-timeout must be a positive number of seconds")
    if not job_id or any(ch.isspace() for ch in job_id):
        raise click.UsageError(f"{job_id[:64]!r} is not a job id (like n1-42)")
    if not follow:
        res = tail_at(addr, job_id, **_client_kw())
        if as_json:
            _print_json(res.to_dict())
        else:
            _write(res.stdout, res.stderr)
        return job_exit_code(res.status) if res.state in FINAL_STATES else 0
    try:
        status = follow_job(addr, job_id, _json_line if as_json else _write, start_wait_s=start_timeout,
                            **_client_kw())
    except TimeoutError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(status.to_dict()))
        return job_exit_code(status)
    return _ended(status)
