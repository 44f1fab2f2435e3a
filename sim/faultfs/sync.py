"""Durability on the faultfs disk: fsync of a file (its overlay folds into
the object) or of a directory (its entries become durable, and the backing
tree agrees), writeback past DIRTY_BYTES_MAX, a clean sync of everything, and
the power cut that forgets everything volatile.
"""

from __future__ import annotations

import os
import shutil

from sim.faultfs.nodes import (
    DIRTY_BYTES_MAX,
    PAGE_BYTES,
    ROOT_INODE,
    TREE_DEPTH_MAX,
    Node,
)


class SyncMixin:
    """The syncs and the power cut of the Disk (sim/faultfs/model.py)."""

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
