"""The namespace of the faultfs disk: lookups, creating, unlinking and
renaming names, and listing directories. Every change is to the volatile
`entries` of a directory; only a sync of the directory (sync.py) makes it
durable.
"""

from __future__ import annotations

import errno
import stat
import time

from sim.faultfs.nodes import HANDLES_MAX, TREE_DEPTH_MAX, Node, _err


class NamesMixin:
    """The names of the Disk (sim/faultfs/model.py)."""

    def lookup(self, parent_ino: int, name: bytes) -> Node:
        parent = self._dir(parent_ino)
        if name == b".":
            node = parent
        elif name == b"..":
            node = parent.parent or parent
        else:
            node = parent.entries.get(name)
            if node is None:
                raise _err(errno.ENOENT)
        node.lookups += 1
        return node

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is not None:
            node.lookups = max(0, node.lookups - count)
            self._retire(node)

    def _link_name(self, parent: Node, name: bytes, node: Node) -> None:
        parent.entries[name] = node
        node.nlink += 1
        if node.parent is None or not node.parent.alive or node.parent.entries.get(node.name) is not node:
            node.parent, node.name = parent, name
        self._touch(parent)
        self.dirty_dirs.add(parent)

    def _unlink_name(self, parent: Node, name: bytes) -> Node:
        node = parent.entries.pop(name)
        node.nlink -= 1
        self._touch(parent)
        self.dirty_dirs.add(parent)
        return node

    def _new_entry_in(self, parent_ino: int, name: bytes) -> Node:
        """The directory a new name goes in, once the name is valid and free
        and the space budget is not used up (mkdir and create)."""
        parent = self._dir(parent_ino)
        self._check_name(name)
        if name in parent.entries:
            raise _err(errno.EEXIST)
        if self.budget_bytes is not None and self.used_bytes >= self.budget_bytes:
            self.counters.enospc += 1
            raise _err(errno.ENOSPC, "budget used up")
        return parent

    def mkdir(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        parent = self._new_entry_in(parent_ino, name)
        node = self._new_node(True, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self._link_name(parent, name, node)
        node.lookups += 1
        return node

    def create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[int, Node]:
        parent = self._new_entry_in(parent_ino, name)
        if len(self.handles) >= HANDLES_MAX:
            raise _err(errno.ENFILE, f"more than {HANDLES_MAX} open handles (HANDLES_MAX)")
        node = self._new_node(False, stat.S_IFREG | (mode & 0o7777), uid, gid)
        try:
            with open(self._object(node), "xb"):
                pass
        except OSError:
            self.nodes.pop(node.ino, None)
            raise
        self._link_name(parent, name, node)
        node.lookups += 1
        return self._open_handle(node), node

    def unlink(self, parent_ino: int, name: bytes) -> None:
        parent = self._dir(parent_ino)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.is_dir:
            raise _err(errno.EISDIR)
        self._unlink_name(parent, name)
        node.ctime_ns = time.time_ns()
        self._retire(node)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        parent = self._dir(parent_ino)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if node.entries:
            raise _err(errno.ENOTEMPTY)
        self._unlink_name(parent, name)
        self._retire(node)

    def rename(self, old_ino: int, old: bytes, new_ino: int, new: bytes, noreplace: bool = False) -> None:
        src_dir, dst_dir = self._dir(old_ino), self._dir(new_ino)
        self._check_name(new)
        node = src_dir.entries.get(old)
        if node is None:
            raise _err(errno.ENOENT)
        target = dst_dir.entries.get(new)
        if target is node:
            return
        if target is not None:
            if noreplace:
                raise _err(errno.EEXIST)
            if node.is_dir and not target.is_dir:
                raise _err(errno.ENOTDIR)
            if target.is_dir and not node.is_dir:
                raise _err(errno.EISDIR)
            if target.is_dir and target.entries:
                raise _err(errno.ENOTEMPTY)
        if node.is_dir:  # moving a directory into itself would detach a cycle
            cur, depth = dst_dir, 0
            while cur is not None and depth < TREE_DEPTH_MAX:
                if cur is node:
                    raise _err(errno.EINVAL, "a directory cannot move into itself")
                cur, depth = cur.parent, depth + 1
        if target is not None:
            self._unlink_name(dst_dir, new)
        self._unlink_name(src_dir, old)
        node.parent = None
        self._link_name(dst_dir, new, node)
        node.ctime_ns = time.time_ns()
        if target is not None:
            self._retire(target)

    def opendir(self, ino: int) -> int:
        node = self._dir(ino)
        if len(self.handles) >= HANDLES_MAX:
            raise _err(errno.ENFILE, f"more than {HANDLES_MAX} open handles (HANDLES_MAX)")
        fh = self._open_handle(node)
        # A snapshot, so that entries added or removed while a listing is read
        # never make it skip or repeat a name.
        self.handles[fh].listing = sorted(node.entries.items())
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[bytes, Node, int]]:
        """Entries from position `start`, each with the position after it."""
        handle = self._handle(fh)
        return [(name, node, i + 1) for i, (name, node) in enumerate(handle.listing) if i >= start]

