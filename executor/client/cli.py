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

import sys

import click

# The command families register themselves on the one group when imported;
# the names below stay importable from here as before the split.
from executor.client import (  # noqa: F401
    PeerError,
    Unreachable,
    cli_jobs,
    cli_list,
    cli_node,
    cli_peers,
    cli_tail,
)
from executor.client.cli_common import (  # noqa: F401
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    cli,
    client_command,
    job_exit_code,
)
from executor.client.cli_peers import balance_summary  # noqa: F401

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
