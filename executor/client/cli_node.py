"""`peerjobs node` (run a peer) and `peerjobs repair` (repair its data directory).

The commands that run on the peer's own machine, not against a running peer:
settings are resolved here (executor/settings.py), and a peer's fatal
errors (a failed sync, a name conflict, a port in use) become one line.
"""

from __future__ import annotations

import logging
import sys

import click

from executor import settings as st
from executor.client.cli_common import EXIT_USAGE, CliError, _print_json, cli


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
