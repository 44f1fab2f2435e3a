"""The control socket of a faultfs mount: one command per line, one reply line
each (`OK <json>` or `ERR <code> <message>`; the commands are listed in
sim/faultfs/mount.py's docstring), parsed by `Controller` and applied to the
`Disk`; served on a UNIX socket with a bounded number of connections and a
bounded line. Bad input gets an ERR line and changes nothing.
"""

from __future__ import annotations

import json
import os
import socket

import pyfuse3
import trio

from sim.faultfs.model import OPS, Disk

# One control line at most; commands are short, a pattern is at most 1 KiB.
CONTROL_LINE_BYTES_MAX = 4096
# Control connections served at once; one more gets `ERR busy` and is closed.
CONTROL_CONNECTIONS_MAX = 16
# Longest slow-sync delay accepted: a minute is already far past any timeout
# the peer has; more is a typo.
SYNC_DELAY_MS_MAX = 60_000
# How long the kernel cache invalidation after a power cut may take before
# the cut is reported done anyway (it runs in a thread; it can only stall if a
# process is still reading the mount during the cut).
INVALIDATE_TIMEOUT_S = 5.0


class Stop(Exception):
    pass


class Controller:
    """Parses control lines and applies them to the disk. `handle` returns the
    reply line; it never raises for bad input."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.stop_mode: str | None = None  # set by `stop`; the serving loop then ends

    async def handle(self, line: bytes) -> bytes:
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            return b"ERR bad-command control lines are UTF-8\n"
        words = text.split(maxsplit=2)
        if not words:
            return b"ERR bad-command empty line\n"
        cmd, args = words[0].lower(), words[1:]
        try:
            result = await self._run(cmd, args)
        except ValueError as e:
            return f"ERR bad-argument {e}\n".encode()
        except OSError as e:
            return f"ERR io {e}\n".encode()
        if result is None:
            return (f"ERR bad-command unknown command {cmd[:40]!r} "
                    "(power-cut, sync-delay, budget, fail, clear, sync, drop-caches, stats, stop)\n").encode()
        return b"OK " + json.dumps(result, sort_keys=True).encode() + b"\n"

    def _arity(self, args: list[str], n: int, usage: str) -> None:
        if len(args) != n:
            raise ValueError(f"usage: {usage}")

    async def _run(self, cmd: str, args: list[str]) -> dict | None:
        d = self.disk
        if cmd == "power-cut":
            self._arity(args, 0, "power-cut")
            result = d.power_cut()
            await _invalidate_kernel_cache(d)
            return result
        if cmd == "sync-delay":
            self._arity(args, 1, "sync-delay MS")
            ms = _int(args[0], "MS")
            if not 0 <= ms <= SYNC_DELAY_MS_MAX:
                raise ValueError(f"MS must be 0..{SYNC_DELAY_MS_MAX} (SYNC_DELAY_MS_MAX)")
            d.sync_delay_ms = ms
            return {"sync_delay_ms": ms}
        if cmd == "budget":
            self._arity(args, 1, "budget BYTES|none")
            if args[0].lower() == "none":
                d.budget_bytes = None
            else:
                n = _int(args[0], "BYTES")
                if n < 0:
                    raise ValueError("BYTES must be >= 0")
                d.budget_bytes = n
            return {"budget_bytes": d.budget_bytes, "used_bytes": d.used_bytes}
        if cmd == "fail":
            if len(args) != 2:
                raise ValueError(f"usage: fail {'|'.join(OPS)} PATTERN")
            d.fail(args[0].lower(), args[1])
            return {"fail_rules": [list(r) for r in d.fail_rules]}
        if cmd == "clear":
            self._arity(args, 0, "clear")
            d.clear()
            return {}
        if cmd == "sync":
            self._arity(args, 0, "sync")
            d.sync_all()
            return {}
        if cmd == "drop-caches":
            self._arity(args, 0, "drop-caches")
            await _invalidate_kernel_cache(d)
            return {}
        if cmd == "stats":
            self._arity(args, 0, "stats")
            return d.stats()
        if cmd == "stop":
            mode = args[0].lower() if args else "flush"
            if len(args) > 1 or mode not in ("flush", "cut"):
                raise ValueError("usage: stop [flush|cut]")
            self.stop_mode = mode
            return {"stop": mode}
        return None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, not {text[:40]!r}") from None


async def _invalidate_kernel_cache(disk: Disk) -> None:
    """Make the kernel forget attributes and pages of every inode it knows,
    in a thread (the call writes to /dev/fuse and could wait on a page lock
    held by a read we have not answered yet)."""
    inos = [ino for ino, node in disk.nodes.items() if node.lookups > 0]

    def invalidate() -> None:
        for ino in inos:
            try:
                pyfuse3.invalidate_inode(ino, attr_only=False)
            except OSError:
                pass  # the kernel forgot it already

    with trio.move_on_after(INVALIDATE_TIMEOUT_S):
        await trio.to_thread.run_sync(invalidate, abandon_on_cancel=True)


async def _serve_connection(stream: trio.SocketStream, controller: Controller, stop: trio.Event) -> None:
    buf = b""
    async with stream:
        while not stop.is_set():
            while b"\n" not in buf:
                if len(buf) > CONTROL_LINE_BYTES_MAX:
                    await stream.send_all(f"ERR too-long a line is at most {CONTROL_LINE_BYTES_MAX} bytes\n".encode())
                    return
                chunk = await stream.receive_some(CONTROL_LINE_BYTES_MAX)
                if not chunk:
                    return
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            if len(line) > CONTROL_LINE_BYTES_MAX:
                await stream.send_all(f"ERR too-long a line is at most {CONTROL_LINE_BYTES_MAX} bytes\n".encode())
                return
            await stream.send_all(await controller.handle(line))
            if controller.stop_mode is not None:
                stop.set()


async def _serve_control(path: str, controller: Controller, stop: trio.Event, task_status=trio.TASK_STATUS_IGNORED):
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    await listener.bind(path)
    listener.listen(CONTROL_CONNECTIONS_MAX)
    task_status.started()
    active = 0
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await listener.accept()
            stream = trio.SocketStream(conn)
            if active >= CONTROL_CONNECTIONS_MAX:
                with trio.move_on_after(1):
                    await stream.send_all(b"ERR busy too many control connections\n")
                await stream.aclose()
                continue

            async def serve(stream=stream):
                nonlocal active
                active += 1
                try:
                    await _serve_connection(stream, controller, stop)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    active -= 1

            nursery.start_soon(serve)
