"""File data on the faultfs disk: open handles, reads that merge the dirty
overlay over the durable object, writes and truncations into the overlay,
and attribute changes. Nothing here makes anything durable (sync.py does).
"""

from __future__ import annotations

import errno
import os
import time

from sim.faultfs.nodes import HANDLES_MAX, PAGE_BYTES, Handle, Node, _err


class DataMixin:
    """The file contents of the Disk (sim/faultfs/model.py)."""

    # ---------------------------------------------------------------- files

    def _open_handle(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(node, self.epoch, node.is_dir)
        node.handles += 1
        return fh

    def open(self, ino: int) -> int:
        node = self.node(ino)
        if not node.alive:
            raise _err(errno.ENOENT)
        if node.is_dir:
            raise _err(errno.EISDIR)
        if len(self.handles) >= HANDLES_MAX:
            raise _err(errno.ENFILE, f"more than {HANDLES_MAX} open handles (HANDLES_MAX)")
        return self._open_handle(node)

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None or handle.epoch != self.epoch:
            return  # a handle from before a power cut: its node was reset already
        node = handle.node
        node.handles -= 1
        self._close_if_idle(node)
        self._retire(node)

    def _durable_page(self, node: Node, pno: int) -> bytearray:
        start = pno * PAGE_BYTES
        page = bytearray(PAGE_BYTES)
        if start < min(node.durable_size, node.zero_from):
            data = os.pread(self._fd(node), PAGE_BYTES, start)
            page[: len(data)] = data
            cut = node.zero_from - start
            if 0 <= cut < PAGE_BYTES:
                page[cut:] = bytes(PAGE_BYTES - cut)
        return page

    def _read(self, node: Node, off: int, size: int) -> bytes:
        end = min(off + size, node.size)
        if off >= end:
            return b""
        if not node.pages and end <= min(node.durable_size, node.zero_from):
            return os.pread(self._fd(node), end - off, off)  # the common case: nothing dirty
        out = bytearray()
        pos = off
        while pos < end:
            pno, inner = divmod(pos, PAGE_BYTES)
            page = node.pages.get(pno)
            if page is None:
                page = self._durable_page(node, pno)
            take = min(end - pos, PAGE_BYTES - inner)
            out += page[inner: inner + take]
            pos += take
        return bytes(out)

    def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._handle(fh).node
        self._check_fault("read", node)
        return self._read(node, off, size)

    def _dirty_page(self, node: Node, pno: int) -> bytearray:
        page = node.pages.get(pno)
        if page is None:
            page = node.pages[pno] = self._durable_page(node, pno)
            self.dirty_pages += 1
        elif pno in node.lost:
            node.lost.discard(pno)  # written again: dirty again, a later sync writes it
            self.dirty_pages += 1
        return page

    def write(self, fh: int, off: int, data: bytes) -> int:
        node = self._handle(fh).node
        self._check_fault("write", node)
        end = off + len(data)
        self._check_space(max(0, end - node.size))
        pos = off
        while pos < end:
            pno, inner = divmod(pos, PAGE_BYTES)
            take = min(end - pos, PAGE_BYTES - inner)
            self._dirty_page(node, pno)[inner: inner + take] = data[pos - off: pos - off + take]
            pos += take
        if end > node.size:
            self.used_bytes += end - node.size
            node.size = end
        self._touch(node)
        self._writeback_if_needed()
        return len(data)

    def truncate(self, ino: int, size: int) -> Node:
        node = self.node(ino)
        if node.is_dir:
            raise _err(errno.EISDIR)
        if size < 0:
            raise _err(errno.EINVAL)
        self._check_fault("write", node)
        self._check_space(max(0, size - node.size))
        if size < node.size:
            for pno in [p for p in node.pages if p * PAGE_BYTES >= size]:
                if pno not in node.lost:
                    self.dirty_pages -= 1
                node.lost.discard(pno)
                del node.pages[pno]
            pno, inner = divmod(size, PAGE_BYTES)
            if inner and pno in node.pages:
                node.pages[pno][inner:] = bytes(PAGE_BYTES - inner)
            node.zero_from = min(node.zero_from, size)
        self.used_bytes += size - node.size
        node.size = size
        self._touch(node)
        self._close_if_idle(node)
        return node

    def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> Node:
        node = self.node(ino)
        if size is not None:
            self.truncate(ino, size)
        if mode is not None:
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        node.ctime_ns = time.time_ns()
        return node

