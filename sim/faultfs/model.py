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

The model is one class, `Disk`, in parts: sim/faultfs/nodes.py (bounds, nodes,
handles), names.py (the namespace), data.py (file contents), sync.py (fsync,
writeback, the power cut); this module holds the Disk itself: loading the
backing tree, the shared checks, and the faults set at run time.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
import time

from sim.faultfs.data import DataMixin
from sim.faultfs.names import NamesMixin
from sim.faultfs.nodes import (
    DIRTY_BYTES_MAX,
    FAIL_RULES_MAX,
    HANDLES_MAX,
    NAME_BYTES_MAX,
    NAME_MODELS,
    NODES_MAX,
    OPS,
    PAGE_BYTES,
    PATTERN_BYTES_MAX,
    ROOT_INODE,
    STATE_DIR,
    TREE_DEPTH_MAX,
    Counters,
    Handle,
    Node,
    _err,
)
from sim.faultfs.sync import SyncMixin

__all__ = ["DIRTY_BYTES_MAX", "FAIL_RULES_MAX", "HANDLES_MAX", "NAME_BYTES_MAX", "NAME_MODELS", "NODES_MAX", "OPS",
           "PAGE_BYTES", "PATTERN_BYTES_MAX", "ROOT_INODE", "STATE_DIR", "TREE_DEPTH_MAX", "Counters", "Disk",
           "Handle", "Node"]


class Disk(NamesMixin, DataMixin, SyncMixin):
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
