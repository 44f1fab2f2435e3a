"""What every `peerjobs` command shares: the click group, exit codes, the
one-line `CliError`, the client's token/TLS from the environment, output
helpers, `--peer/--json/--config`, and following `not-home` to a job's home.

Apart from the commands (executor/client/cli_node.py, cli_jobs.py,
cli_peers.py) so that each command family reads on its own and all of them
register on the one group defined here; executor/client/cli.py imports them
all and is the entry point.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from executor import settings as st
from executor.client import Client, JobResult, JobStatus, PeerError
from executor.core.protocol import NOT_HOME_UNKNOWN, ErrorCode

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
            "dead": "red", "failed": "red", "cancelled": "dim", "scheduled": "blue",
            "waiting": "yellow"}.get(state, "")


def _state_text(state: str):
    """A state as rich `Text` in its colour: never read as markup, so a state
    (or any text) a peer sends cannot break or restyle the output."""
    from rich.text import Text

    return Text(state, style=_state_style(state))


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


def _job_request(addr: str, job_id: str, call, *, timeout_s: float = 30.0):
    """Run `call(client)` at the peer, following `not-home` to the job's home
    peer when the answer carries its address (the `home=` field; "-" when
    the peer does not know it, and then the error stands)."""
    with Client(addr, timeout_s=timeout_s, **_client_kw()) as c:
        try:
            return call(c)
        except PeerError as exc:
            home = exc.fields.get("home") if exc.code == ErrorCode.NOT_HOME else None
            if home is None or home == NOT_HOME_UNKNOWN:
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


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 job`, `2 jobs`, `1,000 jobs`: a count with its noun in the right number."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


def _n(value) -> str:
    return "–" if value is None else f"{value:,}"

