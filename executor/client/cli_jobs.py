"""The job commands: `submit` (one, or a file of them with a progress bar),
`status`, `result`, `wait` and `cancel` (`jobs`: executor/client/cli_list.py).

Each talks to one peer and follows `not-home` to a job's home
(`_job_request` in executor/client/cli_common.py); `result`, `wait` and
`submit --wait` exit with the job's own exit code.
"""

from __future__ import annotations

import math
import sys
import time

import click

from executor.client import (
    Client,
    JobResult,
    JobStatus,
    PeerError,
    WaitTimeout,
    submit_line,
)
from executor.client.cli_common import (
    EXIT_ERROR,
    CliError,
    _client_kw,
    _console,
    _emit_result,
    _job_request,
    _print_json,
    _state_style,
    _state_text,
    cli,
    client_command,
    plural,
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


def _job_ids(values: tuple[str, ...]) -> list[str] | None:
    """`--after a,b --after c` -> [a, b, c] (None when not given)."""
    ids = [j.strip() for value in values for j in value.split(",") if j.strip()]
    return ids or None


def _command_text(words: tuple[str, ...]) -> str:
    """The shell command the words stand for: ONE word is a shell string, run
    as written (`'echo $HOME | wc -c'`); SEVERAL words keep their meaning,
    quoted with `shlex.join` (`sh -c 'echo out; exit 3'` runs `sh` with
    those two arguments), as `docker run` and `kubectl exec` do -- not joined
    with spaces like ssh, which would turn them into a different command."""
    import shlex

    return words[0] if len(words) == 1 else shlex.join(words)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-f", "--file", "file_", metavar="FILE", help="submit one command per line of FILE ('-': stdin)")
@click.option("-w", "--wait", is_flag=True, help="wait: print the result (exit with the job's code), or a progress bar")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="the jobs' run time limit")
@click.option("--retries", type=int, default=None, metavar="N", help="run a failed job again, up to N more times")
@click.option("--backoff", type=float, default=None, metavar="SECONDS",
              help="wait BACKOFF x 2^(k-1) before try k+1 (needs --retries)")
@click.option("--priority", type=int, default=None, metavar="P", help="higher starts first (default 0)")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="set a variable in the job's environment (repeatable)")
@click.option("--cwd", default=None, metavar="DIR", help="the job's working directory on the peer that runs it")
@click.option("--delay", type=float, default=None, metavar="SECONDS", help="queue the job only after this long")
@click.option("--at", "at", type=float, default=None, metavar="UNIX_TIME", help="queue the job only at this time")
@click.option("--keep", type=float, default=None, metavar="SECONDS",
              help="keep the finished record and output this long")
@click.option("--after", multiple=True, metavar="ID[,ID...]", help="run once every one of these jobs is done")
@click.option("--after-any", "after_any", multiple=True, metavar="ID[,ID...]",
              help="run once every one of these jobs is finished, whatever its state")
@click.option("--slots", type=int, default=None, metavar="K", help="the job takes K of a peer's slots")
@click.option("--array", default=None, metavar="A-B[%M]",
              help="jobs ID.A to ID.B, each with $PEERJOBS_ARRAY_INDEX; at most M at once")
@click.option("--every", type=float, default=None, metavar="SECONDS", help="a periodic job: a run every SECONDS")
@click.option("--cron", default=None, metavar="'M H DoM Mon DoW'", help="a periodic job on a cron schedule (UTC)")
@client_command
def submit(command, file_, wait, timeout, retries, backoff, priority, env, cwd, delay, at, keep, after, after_any,
           slots, array, every, cron, addr, as_json) -> int:
    """Submit a shell command (or a file of them); print the job id.

    ONE word after the options is a shell string, run as written by
    /bin/sh -c; SEVERAL words keep their meaning (quoted with shlex.join,
    as `docker run` does), so `-- sh -c 'echo out; exit 3'` runs sh with
    those two arguments. Options go before the command; `--` ends them.

    \b
      peerjobs submit echo hello
      peerjobs submit 'echo $HOSTNAME | tr a-z A-Z'
      peerjobs submit --wait -- make -j4 test
      peerjobs submit --retries 3 --backoff 2 --priority 5 --env MODE=fast -- ./flaky.sh
      peerjobs submit --after n1-4,n1-5 -- ./merge.sh
      seq 100 | sed 's/^/sleep 0.1; echo /' | peerjobs submit --file - --wait
    """
    if timeout is not None and not (0 < timeout < math.inf):
        raise click.UsageError("--timeout must be a positive number of seconds")
    variables = {}
    for item in env:
        name, eq, value = item.partition("=")
        if not eq:
            raise click.UsageError(f"--env takes NAME=VALUE, not {item[:32]!r}")
        variables[name] = value
    options = dict(retries=retries, backoff_s=backoff, priority=priority, env=variables or None, cwd=cwd,
                   delay_s=delay, at=at, keep_s=keep, after=_job_ids(after), after_any=_job_ids(after_any),
                   slots=slots, array=array, every_s=every, cron=cron)
    if wait and (every is not None or cron is not None):
        raise click.UsageError("a periodic job never finishes, so --wait cannot wait for it "
                               "(`peerjobs cancel ID` stops it)")
    if file_ is not None:
        if command:
            raise click.UsageError("give a command or --file, not both")
        commands = _read_commands(file_)
        if not commands:
            raise CliError(f"{file_} holds no commands")
        lines = [_line(c, timeout, options) for c in commands]
        return _submit_batch(addr, commands, lines, wait, as_json)
    if not command:
        raise click.UsageError("missing the command to run (peerjobs submit <command...>)")
    line = _line(_command_text(command), timeout, options)
    with Client(addr, **_client_kw()) as c:
        job_id = c.request(line)
        if not wait:
            if as_json:
                _print_json({"id": job_id})
            else:
                click.echo(job_id)
            return 0
        final = c.wait(job_id)
        if final.is_parent:  # an array: no output of its own; its elements' states
            _print_status([final], as_json)
            return 0 if final.state == "done" else EXIT_ERROR
        return _emit_result(c.result(job_id), as_json)


def _line(command: str, timeout: float | None, options: dict) -> str:
    """The SUBMIT line (executor/client/lines.py checks every option); a bad
    option is a usage error naming it, before anything is sent."""
    try:
        return submit_line(command, timeout, **options)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


def _submit_batch(addr: str, commands: list[str], lines: list[str], wait: bool, as_json: bool) -> int:
    with Client(addr, **_client_kw()) as c:
        ids = c.submit_many(lines)
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
    rows = [{**final[j].to_dict(), "command": cmd} for cmd, j in accepted]
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
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = _console()
    by_state: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    parts = [f"[{_state_style(s) or 'none'}]{n} {escape(s)}[/]" for s, n in sorted(by_state.items())]
    if rejected:
        parts.append(f"[red]{rejected} not submitted[/]")
    runtimes = [r["runtime_ms"] for r in rows if r.get("runtime_ms") is not None]  # an array's row has none
    executors = sorted({r["executor"] for r in rows if r.get("executor") not in (None, "-")})
    console.print(f"{plural(len(rows), 'job')}: " + ", ".join(parts)
                  + (f"; ran on {plural(len(executors), 'peer')}: {', '.join(executors)}" if executors else "")
                  + (f"; runtime p50 {sorted(runtimes)[len(runtimes) // 2]} ms" if runtimes else ""))
    bad = [r for r in rows if r["state"] != "done"]
    if bad:
        table = Table(title=f"not done ({len(bad)})", title_justify="left")
        for col in ("job", "state", "exit", "reason", "command"):
            table.add_column(col)
        for r in bad[:20]:
            table.add_row(Text(r["id"]), _state_text(r["state"]), str(r["exit"] if r.get("exit") is not None else "-"),
                          Text(r.get("reason") or "-"), Text(r["command"]))
        console.print(table)
        if len(bad) > 20:
            console.print(f"... and {len(bad) - 20} more (peerjobs jobs, or --json)")


# --- one job ---------------------------------------------------------------


def _print_status(out: list[JobStatus], as_json: bool) -> None:
    if as_json:
        _print_json(out[0].to_dict() if len(out) == 1 else [s.to_dict() for s in out])
        return
    console = _console()
    for s in out:
        console.print(_status_text(s), soft_wrap=True)


def _status_text(s: JobStatus):
    """One job's line for `status`, as rich `Text` (peer text is never markup)."""
    from rich.text import Text

    if s.is_parent:  # an array or periodic job: its counts as the peer gives them
        parts = [f"{k}={v}" for k, v in s.fields.items() if k != "submitted"]
        return Text("  ").join([Text(s.job_id, style="bold"), _state_text(s.state), *map(Text, parts)])
    parts = []
    if s.exit_code is not None:
        parts.append(f"exit={s.exit_code}")
    if s.reason and s.reason != "nonzero-exit":
        parts.append(f"reason={s.reason}")
    parts.append(f"attempt={s.attempt}")
    if s.tries is not None:
        parts.append(f"try={s.tries[0]}/{s.tries[1]}")
    if s.tries is not None and s.fields.get("last"):  # between two tries: why the last one failed
        parts.append(f"last={s.fields['last']}")
    if s.priority:
        parts.append(f"priority={s.priority}")
    if s.after:
        parts.append(f"after={','.join(s.after)}")
    if s.due is not None:
        parts.append(f"due={time.strftime('%H:%M:%S', time.localtime(s.due))}")
    parts.append(f"executor={s.executor}")
    if s.runtime_ms is not None:
        parts.append(f"runtime={s.runtime_ms}ms")
    return Text("  ").join([Text(s.job_id, style="bold"), _state_text(s.state), *map(Text, parts)])


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@client_command
def status(job_ids, addr, as_json) -> int:
    """Show the state of jobs."""
    out = [_job_request(addr, j, lambda c, j=j: c.status(j)) for j in job_ids]
    _print_status(out, as_json)
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
    """Wait for a job, print its output, exit with its exit code (an array
    or periodic job: its line; exit 0 if it ended done)."""
    if timeout is not None and not (0 < timeout < math.inf):
        raise click.UsageError("--timeout must be a positive number of seconds")

    def call(c: Client) -> JobResult | JobStatus:
        try:
            final = c.wait(job_id, timeout_s=timeout)
        except WaitTimeout:
            raise CliError(f"job {job_id} did not finish within {timeout:g} s") from None
        return final if final.is_parent else c.result(job_id)

    out = _job_request(addr, job_id, call)
    if isinstance(out, JobStatus):  # an array or periodic job: its line, as `submit --wait` prints it
        _print_status([out], as_json)
        return 0 if out.state == "done" else EXIT_ERROR
    return _emit_result(out, as_json)


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
