"""The `peerjobs` command."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys

from executor.config import Config

_NAME = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*\Z")


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def _name(text: str) -> str:
    if not _NAME.match(text) or len(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a peer name is letters, digits, '_', '.' and inner '-' (at most 64)")
    return text


def default_name(port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "peer"
    return f"{host}.{port}"


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerjobs", description="A leaderless peer-to-peer job scheduler.")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run a peer")
    node.add_argument("--data", default="./peerjobs-data", help="data directory (default ./peerjobs-data)")
    node.add_argument("--listen", type=_hostport, default=("127.0.0.1", 7001), help="HOST:PORT (default 127.0.0.1:7001)")
    node.add_argument("--slots", type=_positive, default=None, help="jobs run at once (default: number of CPUs)")
    node.add_argument("--name", type=_name, default=None, help="peer id on first start (default HOST.PORT)")
    node.add_argument("--join", action="append", default=[], metavar="HOST:PORT", help="a seed peer (repeatable)")
    node.add_argument("-v", "--verbose", action="store_true", help="log every job event too")

    repair = sub.add_parser("repair", help="repair a corrupt data directory (LevelDB repair)")
    repair.add_argument("--data", default="./peerjobs-data")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s peerjobs %(message)s",
        stream=sys.stderr,
    )
    if args.command == "node":
        return _node(args)
    if args.command == "repair":
        from storage.store import repair

        try:
            repair(args.data)
        except Exception as exc:  # plyvel raises its own IOError family
            print(f"peerjobs: repair of {args.data} failed: {exc}", file=sys.stderr)
            return 1
        print(f"peerjobs: repaired {args.data}")
        return 0
    return 2


def _node(args) -> int:
    import trio

    from executor.node import Node, serve_forever
    from storage.store import StoreError

    host, port = args.listen
    try:
        node = Node(
            data_dir=args.data,
            listen=(host, port),
            slots=args.slots or os.cpu_count() or 1,
            name=args.name or default_name(port),
            config=Config.local(),
            seeds=[f"{h}:{p}" for h, p in (_hostport(j) for j in args.join)],
        )
    except StoreError as exc:
        print(f"peerjobs: {exc}", file=sys.stderr)
        return 1
    if args.name and node.peer_id != args.name:
        logging.getLogger("peerjobs").warning(
            "%s: --name %s ignored: this data directory already belongs to peer %s", node.peer_id, args.name, node.peer_id
        )
    status = 0
    try:
        trio.run(serve_forever, node)
    except* OSError as group:
        exc = group.exceptions[0]
        print(f"peerjobs: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
