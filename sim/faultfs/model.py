"""The disk model of faultfs: what a power cut keeps. No FUSE and no trio here,
so the model is tested on any machine; `sim/faultfs/mount.py` serves it over FUSE.

Theory of operation
-------------------
The backing directory holds the *durable* state: what a disk that lost power
this instant would still hold. Everything that is not yet durable lives in this
process's memory, as a real kernel's page cache and unwritten journal would:

* File contents. Each file is one node whose durable bytes are the object file
  `<backing>/.faultfs/objects/<ino>`. Writes and truncations go to an overlay
  of dirty pages (`PAGE_BYTES`) and a volatile size; reads merge the overlay
  over the object. `fsync` or `fdatasync` of the file (the two are the same
  here: both must make the data and the size durable) folds the overlay into
  the object.
* Names. Each directory keeps two maps from names to nodes: `entries` (what
  lookups and readdir see) and `durable` (what the disk holds). Creating,
  unlinking and renaming change only `entries`; `fsync` of the directory
  copies `entries` into `durable` and makes the backing tree agree: a durable
  name of a file is a hard link to its object, a durable directory is a real
  directory. So at any moment the backing tree (without `.faultfs`) is exactly
  the durable namespace, and after a clean stop it is an ordinary directory.
* A power cut forgets everything volatile: every directory's `entries`
  become its `durable` map again, every file's overlay is dropped and its size
  becomes its durable size, nodes no durable name reaches are deleted, and
  every open handle is dead (later requests on it get EIO, like a device that
  went away). Processes restart on what is left.

Consequences, which the tests pin down (`names="dir"`, strict POSIX):
a file written and fsynced but whose directory was never fsynced vanishes;
a rename without an fsync of the directories involved reverts (the old name
comes back; if only the target directory was synced, both names survive, as
two hard links to one file); an unlink without a directory fsync reverts too.
With `names="any"`, an fsync of any file or directory also makes every
earlier name change on the whole filesystem durable, which is how ext4 and
XFS journals behave in practice (one ordered metadata journal).

Faults, set at run time: a sync delay (`sync_delay_ms`, applied by the FUSE
layer, which can sleep without blocking other requests), a space budget
(`budget_bytes`: the sum of the sizes of all live files may not exceed it;
writes, truncations that grow, creates and mkdirs past it get ENOSPC), and
EIO rules (`fail(op, pattern)`: `read`, `write` or `fsync` of a file or
directory whose path from the mount root matches the fnmatch pattern). A sync
that fails with EIO marks the dirty pages it should have written as lost, as
Linux does since 4.13 ("fsyncgate"): reads still see them, no later fsync
writes them, and a power cut drops them.

Limits of the model, on purpose: attributes (mode, owner, times) are not
versioned (they never revert); a sync is atomic (no torn pages, no reordering
of writes within a file's unsynced data: either the overlay is kept whole or
dropped whole on a cut); hard links, symlinks and special files are not
supported (LevelDB and the peer use none); extended attributes are not kept.
When unsynced data in memory passes `DIRTY_BYTES_MAX`, the file with the most
dirty pages is written back to the durable store, as a kernel's writeback
would (so a huge unsynced file may partly survive a cut, which is allowed).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
import time
from dataclasses import dataclass, field

# Granularity of the dirty overlay. 4 KiB is the page size of the kernels we
# run on, so a small append dirties one page, as it would in a page cache.
PAGE_BYTES = 4096
# Unsynced data kept in memory before the largest dirty file is written back
# to the durable store (the kernel's dirty_bytes, much smaller here).
DIRTY_BYTES_MAX = 64 * 1024 * 1024
# Nodes (files and directories, live or remembered for the kernel) at most;
# a create past it gets ENOSPC, as on a filesystem out of inodes.
NODES_MAX = 200_000
# Open file and directory handles at most; an open past it gets ENFILE.
HANDLES_MAX = 65_536
# Directory depth walked in the durable tree. A partial directory sync after a
# directory rename can make the durable tree contain a cycle; walks stop here.
TREE_DEPTH_MAX = 64
# Longest file name (the usual NAME_MAX).
NAME_BYTES_MAX = 255
# EIO rules at most, and the longest pattern.
FAIL_RULES_MAX = 64
PATTERN_BYTES_MAX = 1024

ROOT_INODE = 1
STATE_DIR = b".faultfs"
OPS = ("read", "write", "fsync")
NAME_MODELS = ("dir", "any")


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, f"{os.strerror(code)}{': ' + what if what else ''}")


class Node:
    """A file or directory. `entries`/`durable` are for directories; `size`,
    `pages` and the rest for files."""

    __slots__ = ("ino", "is_dir", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns", "entries",
                 "durable", "parent", "name", "nlink", "durable_refs", "handles", "lookups", "size",
                 "durable_size", "zero_from", "pages", "lost", "fd", "alive")

    def __init__(self, ino: int, is_dir: bool, mode: int, uid: int, gid: int, now_ns: int) -> None:
        self.ino = ino
        self.is_dir = is_dir
        self.mode = mode
        self.uid, self.gid = uid, gid
        self.atime_ns = self.mtime_ns = self.ctime_ns = now_ns
        self.entries: dict[bytes, Node] = {}
        self.durable: dict[bytes, Node] = {}
        # One volatile name (the first), for paths in EIO rules and for `..`.
        self.parent: Node | None = None
        self.name = b""
        self.nlink = 0  # volatile names
        self.durable_refs = 0  # durable entries, in any directory, naming this node
        self.handles = 0  # open handles
        self.lookups = 0  # the kernel's references (lookup count), released by forget
        self.size = 0  # what readers see
        self.durable_size = 0
        # Durable bytes at or past this offset read as zeros: a truncation
        # since the last sync cut them off, even if the file grew again.
        self.zero_from = 0
        self.pages: dict[int, bytearray] = {}
        self.lost: set[int] = set()  # dirty pages whose sync failed: never written
        self.fd = -1  # the object file, opened on demand
        self.alive = True  # False once its data is gone (only the kernel remembers it)


@dataclass
class Handle:
    node: Node
    epoch: int
    is_dir: bool
    listing: list[tuple[bytes, Node]] = field(default_factory=list)


@dataclass
class Counters:
    fsyncs: int = 0
    dir_syncs: int = 0
    power_cuts: int = 0
    enospc: int = 0
    eio: int = 0
    writebacks: int = 0
    stale_handles: int = 0


class Disk:
    """The filesystem state. Every method either does all it says or raises
    OSError with an errno and changes nothing."""

    def __init__(self, backing: str, names: str = "dir") -> None:
        if names not in NAME_MODELS:
            raise ValueError(f"names must be one of {NAME_MODELS}, not {names!r}")
        self.backing = os.path.abspath(backing).encode()
        self.names = names
        self.objects = os.path.join(self.backing, STATE_DIR, b"objects")
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, Handle] = {}
        self.next_ino = ROOT_INODE + 1
        self.next_fh = 1  # never reused, so a handle from before a cut stays dead
        self.epoch = 0
        self.used_bytes = 0
        self.dirty_pages = 0
        self.dirty_dirs: set[Node] = set()
        self.budget_bytes: int | None = None
        self.sync_delay_ms = 0
        self.fail_rules: list[tuple[str, str]] = []
        self.counters = Counters()
        self.skipped: list[str] = []  # backing entries not served (symlinks, devices)
        self._load()

    # ------------------------------------------------------------------ load

    def _load(self) -> None:
        """Adopt the backing tree as the durable state: everything already on
        the disk is durable. Stale objects of an earlier run are dropped (the
        names in the tree keep their data alive through their own links)."""
        shutil.rmtree(os.path.join(self.backing, STATE_DIR), ignore_errors=True)
        os.makedirs(self.objects)
        st = os.stat(self.backing)
        root = Node(ROOT_INODE, True, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        root.nlink = 1
        self.nodes[ROOT_INODE] = root
        self._load_dir(root, self.backing, 0)

    def _load_dir(self, dnode: Node, path: bytes, depth: int) -> None:
        if depth >= TREE_DEPTH_MAX:
            self.skipped.append(os.fsdecode(path) + " (too deep)")
            return
        with os.scandir(path) as it:
            items = sorted(it, key=lambda e: e.name)
        for entry in items:
            if depth == 0 and entry.name == STATE_DIR:
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                node = self._new_node(True, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
                self._load_dir(node, entry.path, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                node = self._new_node(False, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
                if st.st_nlink > 1:
                    # A hard link in the backing tree would make two of our
                    # files share bytes: give this name its own copy first.
                    shutil.copy2(entry.path, self._object(node))
                    os.replace(self._object(node), entry.path)
                os.link(entry.path, self._object(node))
                node.size = node.durable_size = node.zero_from = st.st_size
                self.used_bytes += st.st_size
            else:
                self.skipped.append(os.fsdecode(entry.path))
                continue
            dnode.entries[entry.name] = dnode.durable[entry.name] = node
            node.parent, node.name = dnode, entry.name
            node.nlink = node.durable_refs = 1

    # --------------------------------------------------------------- helpers

    def _new_node(self, is_dir: bool, mode: int, uid: int, gid: int, now_ns: int | None = None) -> Node:
        if len(self.nodes) >= NODES_MAX:
            raise _err(errno.ENOSPC, f"more than {NODES_MAX} files (NODES_MAX)")
        node = Node(self.next_ino, is_dir, mode, uid, gid, time.time_ns() if now_ns is None else now_ns)
        self.next_ino += 1
        self.nodes[node.ino] = node
        return node

    def _object(self, node: Node) -> bytes:
        return os.path.join(self.objects, str(node.ino).encode())

    def _fd(self, node: Node) -> int:
        if node.fd < 0:
            node.fd = os.open(self._object(node), os.O_RDWR)
        return node.fd

    @staticmethod
    def _close_if_idle(node: Node) -> None:
        """Object files stay open only while the kernel holds a handle, so
        this process holds at most as many descriptors as there are handles."""
        if node.handles == 0 and node.fd >= 0:
            os.close(node.fd)
            node.fd = -1

    def node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise _err(errno.ENOENT, f"inode {ino}")
        return node

    def _dir(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if not node.alive or node.nlink == 0:
            raise _err(errno.ENOENT, "directory was removed")
        return node

    def path(self, node: Node) -> str:
        """The volatile path from the mount root (its first name), for EIO rules."""
        parts = []
        cur, depth = node, 0
        while cur is not None and cur.ino != ROOT_INODE and depth < TREE_DEPTH_MAX:
            parts.append(cur.name)
            cur, depth = cur.parent, depth + 1
        return os.fsdecode(b"/".join(reversed(parts)))

    def _check_fault(self, op: str, node: Node) -> None:
        if not self.fail_rules:
            return
        path = self.path(node)
        for rule_op, pattern in self.fail_rules:
            if rule_op == op and fnmatch.fnmatchcase(path, pattern):
                self.counters.eio += 1
                raise _err(errno.EIO, f"injected {op} error on {path}")

    def _check_space(self, grow_bytes: int) -> None:
        if self.budget_bytes is not None and self.used_bytes + grow_bytes > self.budget_bytes:
            self.counters.enospc += 1
            raise _err(errno.ENOSPC, f"budget {self.budget_bytes} bytes, {self.used_bytes} used")

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None or handle.epoch != self.epoch:
            self.counters.stale_handles += 1
            raise _err(errno.EIO, "handle opened before a power cut")
        return handle

    @staticmethod
    def _check_name(name: bytes) -> None:
        if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
            raise _err(errno.EINVAL, f"bad name {name!r}")
        if len(name) > NAME_BYTES_MAX:
            raise _err(errno.ENAMETOOLONG)

    def _retire(self, node: Node) -> None:
        """Free a node's data once nothing can reach it any more: no volatile
        name, no open handle, no durable name. The kernel may still hold a
        reference (lookups); the node stays in the table until it forgets."""
        if node.alive and node.nlink == 0 and node.handles == 0 and node.durable_refs == 0:
            node.alive = False
            if not node.is_dir:
                self.dirty_pages -= len(node.pages) - len(node.lost)
                node.pages.clear()
                node.lost.clear()
                self.used_bytes -= node.size
                node.size = 0
                if node.fd >= 0:
                    os.close(node.fd)
                    node.fd = -1
                try:
                    os.unlink(self._object(node))
                except FileNotFoundError:
                    pass
            else:
                self.dirty_dirs.discard(node)
                for child in list(node.durable.values()):
                    child.durable_refs -= 1
                    self._retire(child)
                node.durable = {}
        if not node.alive and node.lookups == 0 and node.ino != ROOT_INODE:
            self.nodes.pop(node.ino, None)

    def _touch(self, node: Node) -> None:
        node.mtime_ns = node.ctime_ns = time.time_ns()

    # ---------------------------------------------------------- the namespace

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

    def mkdir(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        parent = self._dir(parent_ino)
        self._check_name(name)
        if name in parent.entries:
            raise _err(errno.EEXIST)
        if self.budget_bytes is not None and self.used_bytes >= self.budget_bytes:
            self.counters.enospc += 1
            raise _err(errno.ENOSPC, "budget used up")
        node = self._new_node(True, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self._link_name(parent, name, node)
        node.lookups += 1
        return node

    def create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[int, Node]:
        parent = self._dir(parent_ino)
        self._check_name(name)
        if name in parent.entries:
            raise _err(errno.EEXIST)
        if self.budget_bytes is not None and self.used_bytes >= self.budget_bytes:
            self.counters.enospc += 1
            raise _err(errno.ENOSPC, "budget used up")
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

    # ----------------------------------------------------------------- sync

    def _fold(self, node: Node) -> None:
        """Make a file's data and size durable (all but lost pages)."""
        if not node.alive or node.is_dir:
            return
        if not node.pages and node.size == node.durable_size and node.zero_from >= node.size:
            return
        fd = self._fd(node)
        os.ftruncate(fd, min(node.size, node.zero_from))
        os.ftruncate(fd, node.size)
        for pno, page in node.pages.items():
            start = pno * PAGE_BYTES
            if pno in node.lost or start >= node.size:
                continue
            os.pwrite(fd, page[: min(PAGE_BYTES, node.size - start)], start)
        self.dirty_pages -= len(node.pages) - len(node.lost)
        node.pages = {pno: node.pages[pno] for pno in node.lost}
        node.durable_size = node.zero_from = node.size
        self._close_if_idle(node)

    def _writeback_if_needed(self) -> None:
        if self.dirty_pages * PAGE_BYTES <= DIRTY_BYTES_MAX:
            return
        victim = max((n for n in self.nodes.values() if n.pages), key=lambda n: len(n.pages) - len(n.lost))
        self._fold(victim)
        self.counters.writebacks += 1

    def fsync(self, fh: int) -> None:
        """fsync or fdatasync of a file or a directory handle."""
        node = self._handle(fh).node
        try:
            self._check_fault("fsync", node)
        except OSError:
            if not node.is_dir:  # fsyncgate: the pages it failed to write are lost
                self.dirty_pages -= len(node.pages) - len(node.lost)
                node.lost.update(node.pages)
            raise
        if node.is_dir:
            self.counters.dir_syncs += 1
            self._sync_dir(node)
        else:
            self.counters.fsyncs += 1
            self._fold(node)
        if self.names == "any":
            self._sync_all_names()

    def _sync_all_names(self) -> None:
        for dnode in list(self.dirty_dirs):
            self._sync_dir(dnode)

    def sync_all(self) -> None:
        """What `sync` does: every file's data, then every directory."""
        for node in list(self.nodes.values()):
            self._fold(node)
        self._sync_all_names()

    def _durable_paths(self, target: Node) -> list[bytes]:
        """Where the backing tree holds a directory: every durable path to it."""
        found = []
        stack = [(self.nodes[ROOT_INODE], self.backing, 0)]
        while stack:
            dnode, path, depth = stack.pop()
            if dnode is target:
                found.append(path)
            if depth >= TREE_DEPTH_MAX:
                continue
            for name, child in dnode.durable.items():
                if child.is_dir:
                    stack.append((child, os.path.join(path, name), depth + 1))
        return found

    def _materialize(self, path: bytes, node: Node, depth: int) -> None:
        if not node.is_dir:
            os.link(self._object(node), path)
            return
        os.mkdir(path, node.mode & 0o7777)
        if depth >= TREE_DEPTH_MAX:
            return
        for name, child in node.durable.items():
            self._materialize(os.path.join(path, name), child, depth + 1)

    @staticmethod
    def _unmaterialize(path: bytes, node: Node) -> None:
        try:
            if node.is_dir:
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def _sync_dir(self, dnode: Node) -> None:
        self.dirty_dirs.discard(dnode)
        old, new = dnode.durable, dict(dnode.entries)
        paths = self._durable_paths(dnode)
        gone = [(name, child) for name, child in old.items() if new.get(name) is not child]
        added = [(name, child) for name, child in new.items() if old.get(name) is not child]
        for name, child in gone:
            for path in paths:
                self._unmaterialize(os.path.join(path, name), child)
            child.durable_refs -= 1
        dnode.durable = new
        for name, child in added:
            child.durable_refs += 1
            for path in paths:
                self._materialize(os.path.join(path, name), child, 0)
        for _, child in gone:
            self._retire(child)

    # ------------------------------------------------------------ power cut

    def power_cut(self) -> dict:
        """Forget everything not durable. Returns what was dropped."""
        dropped_bytes = (self.dirty_pages) * PAGE_BYTES
        reverted_dirs = sum(1 for d in self.nodes.values() if d.is_dir and d.alive and d.entries != d.durable)
        self.epoch += 1
        self.handles.clear()
        self.dirty_dirs.clear()
        root = self.nodes[ROOT_INODE]
        reachable: dict[int, Node] = {ROOT_INODE: root}
        for node in self.nodes.values():
            node.nlink, node.durable_refs, node.handles = 0, 0, 0
            if node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
        root.nlink = 1
        stack = [(root, 0)]
        while stack:
            dnode, depth = stack.pop()
            dnode.entries = dict(dnode.durable)
            for name, child in dnode.entries.items():
                child.nlink += 1
                child.durable_refs += 1
                if child.ino not in reachable:
                    reachable[child.ino] = child
                    child.parent, child.name = dnode, name
                    if child.is_dir and depth < TREE_DEPTH_MAX:
                        stack.append((child, depth + 1))
        dropped_files = 0
        self.used_bytes = 0
        for node in list(self.nodes.values()):
            if node.ino in reachable:
                node.pages, node.lost = {}, set()
                node.size = node.zero_from = node.durable_size
                self.used_bytes += node.size
            else:
                if node.alive and not node.is_dir:
                    dropped_files += 1
                node.entries, node.durable = {}, {}
                node.pages, node.lost, node.size = {}, set(), 0
                self._retire(node)
        self.dirty_pages = 0
        self.counters.power_cuts += 1
        return {"dropped_dirty_bytes": dropped_bytes, "reverted_dirs": reverted_dirs,
                "dropped_files": dropped_files, "epoch": self.epoch}

    # --------------------------------------------------------------- faults

    def fail(self, op: str, pattern: str) -> None:
        if op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
        if not pattern or len(pattern.encode()) > PATTERN_BYTES_MAX:
            raise ValueError(f"pattern must be 1..{PATTERN_BYTES_MAX} bytes")
        if len(self.fail_rules) >= FAIL_RULES_MAX:
            raise ValueError(f"at most {FAIL_RULES_MAX} rules (FAIL_RULES_MAX); clear first")
        self.fail_rules.append((op, pattern))

    def clear(self) -> None:
        """Remove every fault (delay, budget, EIO rules); the data stays as it is."""
        self.fail_rules = []
        self.budget_bytes = None
        self.sync_delay_ms = 0

    def stats(self) -> dict:
        return {
            "used_bytes": self.used_bytes,
            "dirty_bytes": self.dirty_pages * PAGE_BYTES,
            "budget_bytes": self.budget_bytes,
            "sync_delay_ms": self.sync_delay_ms,
            "fail_rules": [list(r) for r in self.fail_rules],
            "names": self.names,
            "nodes": len(self.nodes),
            "open_handles": len(self.handles),
            "epoch": self.epoch,
            **self.counters.__dict__,
        }

    def statfs(self) -> dict:
        """The backing filesystem's figures, shrunk to the budget when one is set."""
        st = os.statvfs(self.backing)
        free_blocks = st.f_bavail
        if self.budget_bytes is not None:
            free_blocks = min(free_blocks, max(0, self.budget_bytes - self.used_bytes) // st.f_frsize)
        return {"f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks,
                "f_bfree": free_blocks, "f_bavail": free_blocks, "f_files": NODES_MAX,
                "f_ffree": max(0, NODES_MAX - len(self.nodes)), "f_favail": max(0, NODES_MAX - len(self.nodes)),
                "f_namemax": NAME_BYTES_MAX}

    def close(self, flush: bool) -> None:
        """Stop: with `flush`, as a clean unmount (everything becomes durable);
        without, as a power cut. Either way the backing tree is left plain."""
        if flush:
            self.sync_all()
        else:
            self.power_cut()
        for node in self.nodes.values():
            if node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
        shutil.rmtree(os.path.join(self.backing, STATE_DIR), ignore_errors=True)
