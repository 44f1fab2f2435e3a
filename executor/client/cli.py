"""The `peerjobs` command: run a peer, and talk to one.

    peerjobs node --data ./d1 --listen 127.0.0.1:7001 --http 127.0.0.1:8001
    peerjobs submit --wait echo hello
    peerjobs submit --file jobs.txt --wait          # progress bar
    peerjobs status|result|wait|cancel <id>
    peerjobs peers | jobs | stats | top

Client commands take `--peer HOST:PORT` (else `PEERJOBS_ADDR`, else
`[client] peer` of the config file, else 127.0.0.1:7001) and `--json`.
Every error is one line `peerjobs: <message>` on stderr and a non-zero exit
(1; 2 for a usage error; 130 when interrupted). `submit --wait`, `wait` and
`result` exit with the job's own exit code (124 after a timeout, 128+N after
signal N, 1 if cancelled).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys
import time

import click

from executor import settings as st
from executor.client import Client, JobResult, JobStatus, PeerError, PeerInfo, Unreachable, WaitTimeout

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A one-line error for the user."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _client_kw() -> dict:
    """Token and TLS for the client commands, from the environment only
    (never flags: `ps` shows those)."""
    import os

    kw: dict = {}
    if os.environ.get(st.ENV_TOKEN):
        kw["token"] = os.environ[st.ENV_TOKEN].strip()
    if os.environ.get(st.ENV_TLS_CA):
        kw["ssl_context"] = st.client_tls_context(os.environ[st.ENV_TLS_CA])
    return kw


# ---------------------------------------------------------------------------
# Output helpers


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_json(value) -> None:
    click.echo(json.dumps(value, indent=2))


def _state_style(state: str) -> str:
    return {"alive": "green", "done": "green", "suspect": "yellow", "running": "cyan", "queued": "magenta",
            "dead": "red", "failed": "red", "cancelled": "dim"}.get(state, "")


def job_exit_code(status: JobStatus) -> int:
    """The exit code the CLI passes on for a finished job."""
    if status.exit_code is not None:
        return status.exit_code
    reason = status.reason or ""
    if reason == "timeout":
        return 124
    if reason.startswith("signal-") and reason[7:].isdigit():
        return 128 + int(reason[7:])
    return 0 if status.state == "done" else 1


def _emit_result(result: JobResult, as_json: bool) -> int:
    if as_json:
        _print_json(result.to_dict())
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
        if result.state != "done":
            why = result.status.reason or result.state
            code = f" (exit {result.exit_code})" if result.exit_code is not None else ""
            click.echo(f"peerjobs: job {result.job_id} {result.state}: {why}{code}", err=True)
    return job_exit_code(result.status)


# ---------------------------------------------------------------------------
# Shared options


def client_command(fn):
    """--peer, --json and --config for a command that talks to a peer."""

    @click.option("--peer", "peer", metavar="HOST:PORT", default=None,
                  help=f"the peer to talk to (default: ${st.ENV_ADDR}, then the config file, then {st.DEFAULT_PEER})")
    @click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
    @click.option("--config", "config_file", metavar="FILE.toml", default=None,
                  help=f"config file (default: ${st.ENV_CONFIG}); its [client] peer is used")
    @functools.wraps(fn)
    def wrapper(*args, peer, as_json, config_file, **kwargs):
        addr = _resolve_peer(peer, config_file)
        return fn(*args, addr=addr, as_json=as_json, **kwargs)

    return wrapper


def _resolve_peer(peer: str | None, config_file: str | None) -> str:
    try:
        return st.resolve_peer(peer, config_flag=config_file).value
    except st.SettingsError as exc:
        raise CliError(str(exc)) from None


def _home_of(message: str) -> str | None:
    match = re.search(r" at (\S+); ask it there", message)
    return match.group(1) if match else None


def _job_request(addr: str, job_id: str, call, *, timeout_s: float = 30.0):
    """Run `call(client)` at the peer, following `not-home` to the job's home
    peer when the answer names its address."""
    with Client(addr, timeout_s=timeout_s, **_client_kw()) as c:
        try:
            return call(c)
        except PeerError as exc:
            home = _home_of(exc.message) if exc.code == "not-home" else None
            if home is None:
                raise
    with Client(home, timeout_s=timeout_s, **_client_kw()) as c:
        return call(c)


# ---------------------------------------------------------------------------
# The command group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """A leaderless peer-to-peer job scheduler.

    Run peers with `peerjobs node`; submit and follow jobs with the other
    commands, against any peer (--peer HOST:PORT or $PEERJOBS_ADDR).
    """


# --- node ------------------------------------------------------------------


def _listen_flag(ctx, param, value):
    if value is None:
        return None
    try:
        st.parse_hostport(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@cli.command()
@click.option("--data", default=None, help="data directory (default ./peerjobs-data)")
@click.option("--listen", default=None, callback=_listen_flag, metavar="HOST:PORT",
              help="client and peer port (default 127.0.0.1:7001)")
@click.option("--slots", default=None, help="jobs run at once (default: number of CPUs)")
@click.option("--name", default=None, help="peer id on first start (default HOST.PORT)")
@click.option("--join", multiple=True, metavar="HOST:PORT", help="a seed peer (repeatable)")
@click.option("--http", default=None, metavar="HOST:PORT",
              help="serve the dashboard and /metrics here (off by default; use loopback unless trusted)")
@click.option("--preset", default=None, type=click.Choice(list(st.PRESETS)),
              help="timer preset: local (one machine, default) or lan")
@click.option("--config", "config_file", default=None, metavar="FILE.toml",
              help=f"config file (default: ${st.ENV_CONFIG})")
@click.option("--print-config", is_flag=True, help="print every effective setting and where it came from, then exit")
@click.option("--json", "as_json", is_flag=True, help="with --print-config: print JSON")
@click.option("-v", "--verbose", is_flag=True, default=None, help="log every job event too")
@click.option("--secret-file", default=None, metavar="FILE",
              help=f"cluster secret peers must prove they know (else ${st.ENV_SECRET}; never a flag value)")
@click.option("--token-file", default=None, metavar="FILE",
              help=f"token clients must send as AUTH <token> first (else ${st.ENV_TOKEN})")
@click.option("--allow-commands", default=None, metavar="FILE",
              help="accept only SUBMITs on this list (one a line: exact, or a prefix ending in *)")
@click.option("--tls-cert", default=None, metavar="PEM", help="TLS certificate chain: every connection is TLS")
@click.option("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
@click.option("--tls-ca", default=None, metavar="PEM", help="CA that signs the peers' certificates (links verify it)")
@click.option("--insecure", is_flag=True, default=None,
              help="allow listening beyond loopback with neither secret nor token (trusted networks only)")
def node(data, listen, slots, name, join, http, preset, config_file, print_config, as_json, verbose,
         secret_file, token_file, allow_commands, tls_cert, tls_key, tls_ca, insecure) -> int:
    """Run a peer.

    Settings come from flags, then PEERJOBS_* environment variables, then the
    config file, then defaults (see docs/usage.md). Trust: docs/security.md.
    """
    flags = {"data": data, "listen": listen, "slots": slots, "name": name, "join": list(join), "http": http,
             "preset": preset, "verbose": verbose, "secret_file": secret_file, "token_file": token_file,
             "allow_commands": allow_commands, "tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca,
             "insecure": insecure}
    try:
        resolved = st.resolve_node(flags, config_flag=config_file)
    except st.SettingsError as exc:
        raise CliError(str(exc)) from None
    if print_config:
        if as_json:
            _print_json(resolved.to_dict())
        else:
            click.echo(resolved.render_toml(), nl=False)
        return 0
    warnings: list[str] = []
    try:
        security = st.load_security(resolved, warnings=warnings)
    except st.SettingsError as exc:
        raise CliError(str(exc)) from None
    problem = st.exposure_problem(resolved, security)
    if problem is not None:
        raise CliError(problem, EXIT_USAGE)
    _setup_logging(resolved.value("verbose"))
    for warning in warnings:
        logging.getLogger("peerjobs").warning("%s", warning)
    return _run_node(resolved, security, name_given=resolved.node["name"].source != "default (HOST.PORT)")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s peerjobs %(message)s", stream=sys.stderr)
    logging.getLogger("peerjobs.http").setLevel(logging.WARNING)


def _run_node(resolved: st.NodeSettings, security, *, name_given: bool) -> int:
    import trio

    from executor.edge.node import Node, serve_forever
    from storage.store import StoreError

    host, port = st.parse_hostport(resolved.value("listen"))
    http = resolved.value("http")
    try:
        node = Node(
            data_dir=resolved.value("data"),
            listen=(host, port),
            slots=resolved.value("slots"),
            name=resolved.value("name"),
            config=resolved.config,
            seeds=resolved.value("join"),
            http=st.parse_hostport(http) if http else None,
            security=security,
        )
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if name_given and node.peer_id != resolved.value("name"):
        logging.getLogger("peerjobs").warning(
            "%s: --name %s ignored: this data directory already belongs to peer %s",
            node.peer_id, resolved.value("name"), node.peer_id)
    from executor.edge.http import HTTPListenError
    from executor.edge.node import StorageFailed
    from gossip.wire import NameConflict

    try:
        trio.run(serve_forever, node)
    except* (StorageFailed, StoreError) as group:  # a failed sync; a corrupt record found by recovery
        raise CliError(str(_first(group))) from None
    except* NameConflict as group:
        # Another live peer of the cluster has this id (docs/membership.md):
        # one line saying so and what to do, and a non-zero exit.
        raise CliError(str(_first(group))) from None
    except* HTTPListenError as group:
        raise CliError(str(_first(group))) from None
    except* OSError as group:
        exc = _first(group)
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@cli.command()
@click.option("--data", default="./peerjobs-data", help="the data directory to repair")
def repair(data) -> int:
    """Repair a corrupt data directory (LevelDB repair)."""
    from storage.store import repair as repair_store

    try:
        repair_store(data)
    except Exception as exc:  # plyvel raises its own IOError family
        raise CliError(f"repair of {data} failed: {exc}") from None
    click.echo(f"peerjobs: repaired {data}")
    return 0


# --- submit ----------------------------------------------------------------


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
        if exc.code == "not-finished":
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


# --- the cluster -----------------------------------------------------------


def _peers_table(members: list[PeerInfo], stats: dict[str, dict] | None = None, rates: dict[str, float] | None = None):
    """`peers` shows addresses; `top` (with stats) shows rates and steals instead."""
    from rich.table import Table
    from rich.text import Text

    table = Table(expand=False, header_style="bold", pad_edge=False, box=None, padding=(0, 2, 0, 0))
    cols = [("peer", "left")] + ([("address", "left")] if stats is None else [])
    cols += [("state", "left"), ("queued", "right"), ("running", "right"), ("slots", "right"), ("busy", "left")]
    if stats is not None:
        cols += [("jobs/s", "right"), ("stolen in", "right"), ("given", "right"), ("done", "right"), ("failed", "right")]
    for col, justify in cols:
        table.add_column(col, justify=justify, no_wrap=True)
    for m in members:
        name = Text(m.id, style="bold") + (Text(" *", style="dim") if m.is_self else Text(""))
        if m.slots:
            width = min(m.slots, 12)
            filled = round(width * min(m.running or 0, m.slots) / m.slots)
            bar = Text("█" * filled, style="cyan") + Text("░" * (width - filled), style="dim")
        else:
            bar = Text("")
        row = [name] + ([m.addr] if stats is None else [])
        row += [Text(m.state, style=_state_style(m.state)), _n(m.queued), _n(m.running), _n(m.slots), bar]
        if stats is not None:
            s = stats.get(m.id)
            rate = (rates or {}).get(m.id)
            row += [f"{rate:.1f}" if rate is not None else "–"]
            row += [_n(s.get(k)) if s else "–" for k in ("jobs_steals_in", "jobs_steals_out", "jobs_finished", "jobs_failed")]
        table.add_row(*row)
    return table


def _n(value) -> str:
    return "–" if value is None else f"{value:,}"


def balance_summary(members: list[PeerInfo]) -> str:
    alive = [m for m in members if m.state == "alive" and m.slots]
    if not alive:
        return "no alive peer reports its load yet"
    running = sum(m.running or 0 for m in alive)
    queued = sum(m.queued or 0 for m in alive)
    slots = sum(m.slots for m in alive)
    loads = [((m.queued or 0) + (m.running or 0)) / m.slots for m in alive]
    spread = max(loads) - min(loads)
    verdict = "balanced" if spread <= 1.0 else ("balancing" if spread <= 4 else "unbalanced")
    return (f"{len(alive)}/{len(members)} alive · {running}/{slots} slots busy · {queued:,} queued · "
            f"load per slot {min(loads):.1f}–{max(loads):.1f} ({verdict})")


@cli.command()
@client_command
def peers(addr, as_json) -> int:
    """List the members of the cluster with their state and load."""
    with Client(addr, **_client_kw()) as c:
        members = c.members()
    if as_json:
        _print_json([m.to_dict() for m in members])
    else:
        console = _console()
        console.print(_peers_table(members))
        console.print(balance_summary(members), style="dim")
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


@cli.command()
@client_command
def stats(addr, as_json) -> int:
    """Print the peer's counters."""
    with Client(addr, **_client_kw()) as c:
        counters = c.stats()
    if as_json:
        _print_json(counters)
    else:
        width = max(map(len, counters))
        for k, v in counters.items():
            click.echo(f"{k.ljust(width)}  {v}")
    return 0


@cli.command()
@click.option("--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True, help="seconds between refreshes")
@click.option("--once", is_flag=True, help="print one frame and exit (rates over one --interval)")
@client_command
def top(interval, once, addr, as_json) -> int:
    """A live table of the peers: state, load, jobs/s and steals."""
    import trio

    return trio.run(functools.partial(_top, addr, interval, once or as_json, as_json))


async def _sample(addr: str) -> tuple[list[PeerInfo], dict[str, dict]]:
    import trio

    from executor.client import AsyncClient

    async with AsyncClient(addr, timeout_s=5, **_client_kw()) as c:
        members = await c.members()
    stats: dict[str, dict] = {}

    async def one(m: PeerInfo) -> None:
        try:
            async with AsyncClient(m.addr, timeout_s=1, **_client_kw()) as pc:
                stats[m.id] = await pc.stats()
        except (OSError, TimeoutError, PeerError):
            pass  # that peer's counters are unknown this round

    async with trio.open_nursery() as nursery:
        for m in members:
            if m.state != "dead":
                nursery.start_soon(one, m)
    return members, stats


async def _top(addr: str, interval: float, once: bool, as_json: bool) -> int:
    import trio
    from rich.console import Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.text import Text

    previous: tuple[float, dict[str, dict]] | None = None

    def frame(members, stats, rates):
        title = Text.assemble(("peerjobs top", "bold"), f"  via {addr}  ", (time.strftime("%H:%M:%S"), "dim"))
        return Panel(Group(_peers_table(members, stats, rates), Text(""), Text(balance_summary(members))),
                     title=title, title_align="left", border_style="blue")

    def rates_of(now, stats):
        if previous is None:
            return {}
        then, old = previous
        dt = max(now - then, 1e-6)
        return {pid: (s.get("jobs_started", 0) - old[pid].get("jobs_started", 0)) / dt
                for pid, s in stats.items() if pid in old}

    if once:
        _, first = await _sample(addr)
        previous = (time.monotonic(), first)
        await trio.sleep(interval)
        members, stats = await _sample(addr)
        rates = rates_of(time.monotonic(), stats)
        if as_json:
            _print_json({"peers": [dict(m.to_dict(), stats=stats.get(m.id), jobs_per_s=rates.get(m.id))
                                   for m in members], "summary": balance_summary(members)})
        else:
            console = _console()
            if not console.is_terminal:
                console.width = max(console.width, 100)
            console.print(frame(members, stats, rates))
        return 0
    console = _console()
    with Live(console=console, auto_refresh=False, screen=False, transient=False) as live:
        while True:
            members, stats = await _sample(addr)
            now = time.monotonic()
            live.update(frame(members, stats, rates_of(now, stats)), refresh=True)
            previous = (now, stats)
            await trio.sleep(interval)


# ---------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> int:
    def fail(message: str, code: int = EXIT_ERROR) -> int:
        click.echo(f"peerjobs: {message}", err=True)
        return code

    try:
        rv = cli.main(args=argv, prog_name="peerjobs", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return fail("interrupted", EXIT_INTERRUPTED)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        return fail(exc.format_message().splitlines()[0].rstrip(".") + where, EXIT_USAGE)
    except click.ClickException as exc:
        return fail(exc.format_message(), exc.exit_code or EXIT_ERROR)
    except CliError as exc:
        return fail(str(exc), exc.code)
    except Unreachable as exc:
        return fail(str(exc))
    except PeerError as exc:
        return fail(exc.message if exc.message else exc.code)
    except TimeoutError as exc:
        return fail(str(exc) or "the peer did not answer in time")
    except BrokenPipeError:
        return 0  # `peerjobs ... | head`
    except ConnectionError as exc:
        return fail(f"lost the connection to the peer: {exc}")
    except KeyboardInterrupt:
        return fail("interrupted (submitted jobs keep running)", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
