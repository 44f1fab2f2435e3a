"""The job commands: `submit` (one, or a file of them with a progress bar),
`status`, `result`, `wait`, `cancel` and `jobs`.

Each talks to one peer and follows `not-home` to a job's home
(`_job_request` in executor/client/cli_common.py); `result`, `wait` and
`submit --wait` exit with the job's own exit code.
"""

from __future__ import annotations

import math
import sys
import time

import click

from executor.client import Client, JobResult, JobStatus, PeerError, WaitTimeout
from executor.client.cli_common import (
    EXIT_ERROR,
    CliError,
    _client_kw,
    _console,
    _emit_result,
    _job_request,
    _n,
    _print_json,
    _state_style,
    cli,
    client_command,
)
from executor.core.protocol import ErrorCode


def _read_commands(path: str) -> list[str]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None
    commands = [line.strip() for line in text.splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-f", "--file", "file_", metavar="FILE", help="submit one command per line of FILE ('-': stdin)")
@click.option("-w", "--wait", is_flag=True, help="wait: print the result (exit with the job's code), or a progress bar")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="the jobs' run time limit")
@client_command
def submit(command, file_, wait, timeout, addr, as_json) -> int:
    """Submit a shell command (or a file of them); print the job id.

    \b
      peerjobs submit echo hello
      peerjobs submit --wait -- make -j4 test
      seq 100 | sed 's/^/sleep 0.1; echo /' | peerjobs submit --file - --wait
    """
    if file_ is not None:
        if command:
            raise click.UsageError("give a command or --file, not both")
        commands = _read_commands(file_)
        if not commands:
            raise CliError(f"{file_} holds no commands")
        return _submit_batch(addr, commands, timeout, wait, as_json)
    if not command:
        raise click.UsageError("missing the command to run (peerjobs submit <command...>)")
    if timeout is not None and not (0 < timeout < math.inf):
        raise click.UsageError("--timeout must be a positive number of seconds")
    line = " ".join(command)
    with Client(addr, **_client_kw()) as c:
        job_id = c.submit(line, timeout_s=timeout)
        if not wait:
            if as_json:
                _print_json({"id": job_id})
            else:
                click.echo(job_id)
            return 0
        c.wait(job_id)
        return _emit_result(c.result(job_id), as_json)


def _submit_batch(addr: str, commands: list[str], timeout: float | None, wait: bool, as_json: bool) -> int:
    with Client(addr, **_client_kw()) as c:
        ids = c.submit_commands(commands, timeout_s=timeout)
        rejected = [(cmd, err) for cmd, err in zip(commands, ids) if isinstance(err, PeerError)]
        accepted = [(cmd, j) for cmd, j in zip(commands, ids) if isinstance(j, str)]
        for cmd, err in rejected:
            click.echo(f"peerjobs: not submitted: {cmd[:60]!r}: {err.message}", err=True)
        if not wait:
            if as_json:
                _print_json([{"id": j, "command": cmd} for cmd, j in accepted])
            else:
                for _, j in accepted:
                    click.echo(j)
            return EXIT_ERROR if rejected else 0
        final = _follow(c, [j for _, j in accepted], quiet=as_json)
    rows = [{"command": cmd, **final[j].to_dict()} for cmd, j in accepted]
    if as_json:
        _print_json(rows)
    else:
        _batch_summary(rows, len(rejected))
    return EXIT_ERROR if rejected or any(r["state"] != "done" for r in rows) else 0


def _follow(c: Client, job_ids: list[str], *, quiet: bool, poll_s: float = 0.25,
            window: int = 512) -> dict[str, JobStatus]:
    """Wait for every job, with a progress bar on stderr: the oldest `window`
    unfinished jobs are polled with pipelined STATUS (jobs start roughly
    oldest first, so the running ones are among them)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    pending = list(job_ids)
    final: dict[str, JobStatus] = {}
    counts = {"done": 0, "failed": 0, "running": 0}
    progress = Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=None), MofNCompleteColumn(),
        TextColumn("[green]{task.fields[done]} done[/] [red]{task.fields[failed]} failed[/] "
                   "[cyan]{task.fields[running]} running[/]"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=_console(stderr=True), disable=quiet, transient=False, refresh_per_second=8,
    )
    with progress:
        task = progress.add_task("jobs", total=len(job_ids), **counts)
        while pending:
            head = pending[:window]
            running = 0
            for job_id, status in zip(head, c.statuses(head)):
                if isinstance(status, PeerError):
                    status = JobStatus(job_id, "failed", {"reason": status.code})
                if status.final:
                    final[job_id] = status
                    counts["done" if status.state == "done" else "failed"] += 1
                elif status.state == "running":
                    running += 1
            counts["running"] = running
            pending = [j for j in pending if j not in final] if len(final) else pending
            progress.update(task, completed=len(final), **counts)
            if pending:
                time.sleep(poll_s)
    return final


def _batch_summary(rows: list[dict], rejected: int) -> None:
    from rich.table import Table

    console = _console()
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    parts = [f"[{_state_style(s)}]{n} {s}[/]" for s, n in sorted(by_state.items())]
    if rejected:
        parts.append(f"[red]{rejected} not submitted[/]")
    runtimes = [r["runtime_ms"] for r in rows if r["runtime_ms"] is not None]
    executors = sorted({r["executor"] for r in rows if r["executor"] not in (None, "-")})
    console.print(f"{len(rows)} jobs: " + ", ".join(parts)
                  + (f"; ran on {len(executors)} peer(s): {', '.join(executors)}" if executors else "")
                  + (f"; runtime p50 {sorted(runtimes)[len(runtimes) // 2]} ms" if runtimes else ""))
    bad = [r for r in rows if r["state"] != "done"]
    if bad:
        table = Table(title=f"not done ({len(bad)})", title_justify="left")
        for col in ("job", "state", "exit", "reason", "command"):
            table.add_column(col)
        for r in bad[:20]:
            table.add_row(r["id"], f"[{_state_style(r['state'])}]{r['state']}[/]", str(r["exit"] if r["exit"] is not None else "-"),
                          r["reason"] or "-", r["command"])
        console.print(table)
        if len(bad) > 20:
            console.print(f"... and {len(bad) - 20} more (peerjobs jobs, or --json)")


# --- one job ---------------------------------------------------------------


def _status_text(s: JobStatus) -> str:
    parts = [f"[bold]{s.job_id}[/]", f"[{_state_style(s.state)}]{s.state}[/]"]
    if s.exit_code is not None:
        parts.append(f"exit={s.exit_code}")
    if s.reason and s.reason != "nonzero-exit":
        parts.append(f"reason={s.reason}")
    parts.append(f"attempt={s.attempt}")
    parts.append(f"executor={s.executor}")
    if s.runtime_ms is not None:
        parts.append(f"runtime={s.runtime_ms}ms")
    return "  ".join(parts)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@client_command
def status(job_ids, addr, as_json) -> int:
    """Show the state of jobs."""
    out = [_job_request(addr, j, lambda c, j=j: c.status(j)) for j in job_ids]
    if as_json:
        _print_json(out[0].to_dict() if len(out) == 1 else [s.to_dict() for s in out])
    else:
        console = _console()
        for s in out:
            console.print(_status_text(s))
    return 0


@cli.command()
@click.argument("job_id")
@client_command
def result(job_id, addr, as_json) -> int:
    """Print a finished job's output; exit with its exit code."""
    try:
        res = _job_request(addr, job_id, lambda c: c.result(job_id))
    except PeerError as exc:
        if exc.code == ErrorCode.NOT_FINISHED:
            raise CliError(f"job {job_id} has not finished yet; `peerjobs wait {job_id}` waits for it") from None
        raise
    return _emit_result(res, as_json)


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="give up after this long")
@client_command
def wait(job_id, timeout, addr, as_json) -> int:
    """Wait for a job, print its output, exit with its exit code."""
    if timeout is not None and not (0 < timeout < math.inf):
        raise click.UsageError("--timeout must be a positive number of seconds")

    def call(c: Client) -> JobResult:
        try:
            c.wait(job_id, timeout_s=timeout)
        except WaitTimeout:
            raise CliError(f"job {job_id} did not finish within {timeout:g} s") from None
        return c.result(job_id)

    return _emit_result(_job_request(addr, job_id, call), as_json)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@client_command
def cancel(job_ids, addr, as_json) -> int:
    """Cancel queued or running jobs (their process groups are killed)."""
    out = []
    for j in job_ids:
        _job_request(addr, j, lambda c, j=j: c.cancel(j))
        out.append({"id": j, "state": "cancelled"})
        if not as_json:
            click.echo(f"{j} cancelled")
    if as_json:
        _print_json(out[0] if len(out) == 1 else out)
    return 0



@cli.command()
@click.option("-n", "--count", type=click.IntRange(1, 1000), default=20, help="how many (default 20)")
@click.option("--state", type=click.Choice(["queued", "running", "done", "failed", "cancelled"]), default=None)
@client_command
def jobs(count, state, addr, as_json) -> int:
    """List the latest jobs submitted to the peer."""
    with Client(addr, **_client_kw()) as c:
        out = c.list(count)
    if state:
        out = [s for s in out if s.state == state]
    if as_json:
        _print_json([s.to_dict() for s in out])
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold", padding=(0, 2, 0, 0), pad_edge=False)
    for col, justify in (("job", "left"), ("state", "left"), ("exit", "right"), ("reason", "left"),
                         ("executor", "left"), ("attempt", "right"), ("runtime", "right"), ("age", "right")):
        table.add_column(col, justify=justify)
    now = time.time()
    for s in out:
        table.add_row(s.job_id, f"[{_state_style(s.state)}]{s.state}[/]", _n(s.exit_code), s.reason or "",
                      s.executor, str(s.attempt), f"{s.runtime_ms} ms" if s.runtime_ms is not None else "–",
                      _age(now - s.submitted) if s.submitted else "–")
    _console().print(table)
    return 0


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"

