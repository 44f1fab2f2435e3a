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

The control socket's commands are parsed, applied and served in
sim/faultfs/control.py; this module is the FUSE side and the process.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys

import pyfuse3
import trio

from sim.faultfs.control import Controller, _serve_control
from sim.faultfs.model import PAGE_BYTES, Disk

log = logging.getLogger("faultfs")

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
