"""The FUSE edge of faultfs: serves a `Disk` (sim/faultfs/model.py) at a mount
point with pyfuse3, and a control socket beside it. Runs as its own process
(`python -m sim.faultfs mount BACKING MOUNTPOINT --control SOCKET`), started
and stopped by `sim.faultfs.FaultFS`.

Every request is handled to the end without yielding to trio, except the sleep
of a slow sync, so a power cut from the control socket always falls between
two requests; a sync that was sleeping across a cut finds its handle dead and
answers EIO.

The kernel is asked to cache nothing that a power cut could make stale: entry
and attribute timeouts are 0, files are opened without `keep_cache` (the page
cache is dropped at every open), there is no writeback cache (every write
reaches us before write() returns), and after a cut every inode the kernel
knows is invalidated.

Control protocol: one command per line, one reply line each, `OK <json>` or
`ERR <code> <message>` (nc -U works):

    power-cut              drop everything not durable; open handles go dead
    sync-delay MS          every fsync/fdatasync/fsyncdir first sleeps MS ms
    budget BYTES|none      ENOSPC once live files would pass BYTES in total
    fail OP PATTERN        EIO for OP (read|write|fsync) on paths matching PATTERN
    clear                  no delay, no budget, no EIO rules
    sync                   make everything durable now (what sync(1) does)
    drop-caches            the kernel forgets its cached pages and attributes of every file (so
                           that reads reach faultfs, and its read faults, again)
    stats                  counters and sizes
    stop [flush|cut]       unmount and exit: flush = clean unmount (default), cut = power cut first
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys

import pyfuse3
import trio

from sim.faultfs.model import OPS, PAGE_BYTES, Disk

log = logging.getLogger("faultfs")

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
# FUSE worker tasks: enough for a few processes' concurrent syncs to sleep at once.
FUSE_TASKS_MAX = 64


def _fuse_errors(fn):
    """Turn the model's OSError into the errno the caller of the syscall sees."""

    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    wrapper.__name__ = fn.__name__
    return wrapper


class FaultOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, disk: Disk) -> None:
        super().__init__()
        self.disk = disk

    def _attr(self, node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_mode = node.mode
        a.st_nlink = max(1, node.nlink) if not node.is_dir else 2
        a.st_uid, a.st_gid = node.uid, node.gid
        a.st_rdev = 0
        a.st_size = 0 if node.is_dir else node.size
        a.st_blksize = PAGE_BYTES
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = node.atime_ns, node.mtime_ns, node.ctime_ns
        return a

    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        return self._attr(self.disk.lookup(parent_inode, name))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.disk.forget(ino, count)

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attr(self.disk.node(inode))

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.disk.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self._attr(node)

    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self.disk.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, node = self.disk.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._attr(node)

    @_fuse_errors
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=self.disk.open(inode), keep_cache=False)

    @_fuse_errors
    async def read(self, fh, off, size):
        return self.disk.read(fh, off, size)

    @_fuse_errors
    async def write(self, fh, off, buf):
        return self.disk.write(fh, off, buf)

    async def flush(self, fh):
        pass  # close() makes nothing durable; only a sync does

    async def release(self, fh):
        self.disk.release(fh)

    async def _sync(self, fh):
        if self.disk.sync_delay_ms:
            await trio.sleep(self.disk.sync_delay_ms / 1000)
        self.disk.fsync(fh)

    @_fuse_errors
    async def fsync(self, fh, datasync):
        await self._sync(fh)

    @_fuse_errors
    async def fsyncdir(self, fh, datasync):
        await self._sync(fh)

    @_fuse_errors
    async def opendir(self, inode, ctx):
        return self.disk.opendir(inode)

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        for name, node, next_id in self.disk.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, self._attr(node), next_id):
                break
            node.lookups += 1

    async def releasedir(self, fh):
        self.disk.release(fh)

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        self.disk.unlink(parent_inode, name)

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        self.disk.rmdir(parent_inode, name)

    @_fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        self.disk.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                         noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    @_fuse_errors
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        for key, value in self.disk.statfs().items():
            setattr(s, key, value)
        return s


# ------------------------------------------------------------------ control


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


async def _run(disk: Disk, mountpoint: str, control: str, ready_fd: int | None) -> str:
    controller = Controller(disk)
    stop = trio.Event()
    mode = "flush"
    async with trio.open_nursery() as nursery:
        await nursery.start(_serve_control, control, controller, stop)
        nursery.start_soon(pyfuse3.main, 1, FUSE_TASKS_MAX)
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async def on_signal():
                async for signum in signals:
                    log.info("signal %d: clean unmount", signum)
                    stop.set()
                    return

            nursery.start_soon(on_signal)
            await stop.wait()
        mode = controller.stop_mode or "flush"
        pyfuse3.terminate()  # pyfuse3.main returns after its workers finish
        nursery.cancel_scope.cancel()
    return mode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.faultfs mount", description=__doc__.split("\n\n")[0])
    ap.add_argument("backing", help="directory holding the durable state")
    ap.add_argument("mountpoint")
    ap.add_argument("--control", required=True, help="path of the control UNIX socket to create")
    ap.add_argument("--names", choices=("dir", "any"), default="dir",
                    help="dir: a name change is durable only after an fsync of its directory (POSIX); "
                         "any: any fsync makes all earlier name changes durable (ext4-like)")
    ap.add_argument("--ready-fd", type=int, default=None, help="write READY to this fd once mounted")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="faultfs: %(message)s", stream=sys.stderr)
    disk = Disk(args.backing, names=args.names)
    for skipped in disk.skipped:
        log.warning("not served (only files and directories are): %s", skipped)
    options = set(pyfuse3.default_options)
    options.add("fsname=faultfs")
    pyfuse3.init(FaultOps(disk), args.mountpoint, options)
    mode = "flush"
    try:
        mode = trio.run(_run, disk, args.mountpoint, args.control, args.ready_fd)
    finally:
        pyfuse3.close(unmount=True)
        disk.close(flush=(mode == "flush"))
        try:
            os.unlink(args.control)
        except OSError:
            pass
    return 0
