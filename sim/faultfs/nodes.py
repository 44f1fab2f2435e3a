"""The pieces of the faultfs disk model that every part of it shares: its
bounds (each with why), a node (file or directory, with its volatile and
durable state), an open handle and the counters. Kept apart so that the
model's parts (model.py, names.py, data.py, sync.py) import one module, not
each other.
"""

from __future__ import annotations

import os
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

