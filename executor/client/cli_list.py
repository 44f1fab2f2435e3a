"""`peerjobs jobs`: the latest jobs of a peer, like squeue — a table, or
`--json`, or `--parsable` for scripts. The peer filters (`LIST N --state S
--array ID`)."""

from __future__ import annotations

import time

import click

from executor.client import STATES, Client, JobStatus
from executor.client.cli_common import _client_kw, _console, _print_json, _state_text, cli, client_command


_PARSABLE_FIELDS = ("id", "state", "try", "priority", "executor", "exit", "reason", "submitted", "due", "after",
                    "command")
"""`jobs --parsable`'s columns, in this order for good: scripts index them.
`command` is last, since it alone may hold a `|`."""

_COMMAND_CHARS_SHOWN = 40  # the table's command column; --json and --parsable carry it whole


def _parsable_row(s: JobStatus) -> str:
    tries = s.tries
    values = (s.job_id, s.state, f"{tries[0]}/{tries[1]}" if tries else "", str(s.priority), s.executor,
              "" if s.exit_code is None else str(s.exit_code), s.reason or "",
              "" if s.submitted is None else f"{s.submitted:.3f}", "" if s.due is None else f"{s.due:.3f}",
              ",".join(s.after), s.command or "")
    return "|".join(values)


@cli.command()
@click.option("-n", "--count", type=click.IntRange(1, 1000), default=20, help="how many (default 20)")
@click.option("--state", type=click.Choice(STATES), default=None,
              help="only jobs in this state (the peer filters: -n counts matching jobs)")
@click.option("--array", "array", default=None, metavar="ID", help="only the children of this array or periodic job")
@click.option("--parsable", is_flag=True,
              help="for scripts: a header line, then one line per job, fields separated by | "
                   "(docs/usage.md lists them)")
@client_command
def jobs(count, state, array, parsable, addr, as_json) -> int:
    """List the latest jobs submitted to the peer, like squeue.

    Columns: job id, state, try (k/n, with --retries), priority, the peer
    that runs or ran it, age, why it is not done/queued (reason, or what it
    waits for), and the command (when the peer's lines carry it).
    """
    with Client(addr, **_client_kw()) as c:
        try:
            out = c.list(count, state, array)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        _print_json([s.to_dict() for s in out])
        return 0
    if parsable:
        click.echo("|".join(_PARSABLE_FIELDS))
        for s in out:
            click.echo(_parsable_row(s))
        return 0
    from rich.table import Table
    from rich.text import Text

    # The command column only when the peer's lines carry commands (`command=`).
    with_command = any(s.command is not None for s in out)
    table = Table(box=None, header_style="bold", padding=(0, 2, 0, 0), pad_edge=False)
    columns = [("job", "left"), ("state", "left"), ("try", "right"), ("prio", "right"), ("executor", "left"),
               ("age", "right"), ("reason", "left")] + ([("command", "left")] if with_command else [])
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col == "command")
    now = time.time()
    for s in out:
        tries = s.tries
        why = s.reason or ""
        if s.tries is not None and s.fields.get("last"):  # between two tries: why the last one failed
            why = why or f"retry after {s.fields['last']}"
        if s.state == "waiting" and s.after:
            why = why or "after " + ",".join(s.after)
        elif s.state == "scheduled" and s.due is not None:
            why = why or f"due in {_age(max(s.due - now, 0))}"
        command = s.command or "–"
        if len(command) > _COMMAND_CHARS_SHOWN:
            command = command[: _COMMAND_CHARS_SHOWN - 1] + "…"
        row = [Text(s.job_id), _state_text(s.state), f"{tries[0]}/{tries[1]}" if tries else "–",
               str(s.priority), Text(s.executor), _age(now - s.submitted) if s.submitted else "–", Text(why)]
        table.add_row(*row, *([Text(command)] if with_command else []))
    _console().print(table)
    return 0


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"

